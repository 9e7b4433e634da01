#!/usr/bin/env python3
"""Builds the extra English training text for train_byte_llama.py from Debian packages, so that a
six-minute run on an H200 does not go through Austen's 3.4 MB seventy times and memorize it
(issue 15, item 4). Austen's novels stay in training (bench/train/data/austen_train.txt, read
directly by the trainer) and Persuasion stays the held-out test text; nothing here is Austen.

Writes one xz-compressed text per source into bench/train/data/mix/ (ignored by git: ~12 MB
compressed, ~52 MB of text; carry the folder to the device) and MANIFEST.tsv with each source's
package versions, size and SHA-256, so that a rebuild can be compared byte for byte.

Sources (Debian main; literature first, then technical prose):
  kjv         bible-kjv + bible-kjv-text   King James Bible, verse numbers removed (4.3 MB)
  moby_dick   r-cran-tokenizers            Melville's Moby Dick (Gutenberg boilerplate cut; R)
  fortunes    fortunes                     quotations, poems, jokes (ascii-art, translate-me cut)
  jargon      jargon-text                  the Jargon File
  devil       dict-devil                   Bierce's Devil's Dictionary
  dasher      dasher-data                  Dasher's English training text
  python_docs python3.11-doc               the Python documentation's reStructuredText sources
  foldoc      dict-foldoc                  Free On-line Dictionary of Computing
  linux_docs  linux-doc-6.1                the kernel's Documentation/**/*.rst (translations cut)

Needs apt-get (download only, nothing is installed), dpkg-deb and Rscript (apt-get install
r-base-core, as extract_austen.sh). Run: python3 bench/train/extract_english_mix.py
"""
import argparse
import glob
import gzip
import hashlib
import lzma
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def sh(*cmd, cwd=None):
    return subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.PIPE).stdout


class Packages:
    """Downloads and unpacks Debian packages into a scratch folder (apt-get download: no install)."""

    def __init__(self, work):
        self.work = work
        self.versions = {}

    def root(self, name):
        dest = os.path.join(self.work, "x", name)
        if not os.path.isdir(dest):
            sh("apt-get", "download", "-q", name, cwd=self.work)
            deb = sorted(glob.glob(os.path.join(self.work, f"{name}_*.deb")))[-1]
            # apt-get writes an epoch's colon as %3a in the file name.
            self.versions[name] = os.path.basename(deb)[len(name) + 1:].split("_")[0].replace("%3a", ":")
            os.makedirs(dest)
            sh("dpkg-deb", "-x", deb, dest)
        return dest


def read_text(path):
    opener = gzip.open if path.endswith(".gz") or path.endswith(".dz") else open
    with opener(path, "rb") as f:
        return f.read()


def tidy(b):
    """UTF-8 bytes, LF line ends, no BOM, no trailing blanks, at most one empty line in a row."""
    s = b.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    s = s.replace("\ufeff", "")
    s = "\n".join(line.rstrip() for line in s.split("\n"))
    s = re.sub(r"\n{3,}", "\n\n", s).strip("\n")
    return s.encode("utf-8") + b"\n"


def join_docs(parts):
    return b"\n\n".join(tidy(p).rstrip(b"\n") for p in parts if p.strip()) + b"\n"


def kjv(pk):
    # The `bible` reader from bible-kjv prints the whole text; verse references ("Ge1:1 ",
    # "1Co13:4 ") are cut and each chapter becomes one paragraph.
    prog = os.path.join(pk.root("bible-kjv"), "usr/bin/bible")
    data = os.path.join(pk.root("bible-kjv-text"), "usr/lib")
    out = sh(prog, "-p", data, "-f", "-l70", "Gen1:1-Rev22:21").decode("utf-8")
    lines = []
    ref = re.compile(r"^\d?[A-Za-z]+\d+:(\d+) ")
    for line in out.split("\n"):
        m = ref.match(line)
        if m:
            if m.group(1) == "1" and lines:
                lines.append("")
            line = line[m.end():]
        lines.append(line)
    return tidy("\n".join(lines).encode())


def moby_dick(pk):
    rdata = os.path.join(pk.root("r-cran-tokenizers"), "usr/lib/R/site-library/tokenizers/data/Rdata")
    script = ('e <- new.env(); lazyLoad(commandArgs(TRUE)[1], envir = e); '
              'writeLines(enc2utf8(get("mobydick", envir = e)), stdout(), useBytes = TRUE)')
    s = sh("Rscript", "-e", script, rdata).decode("utf-8")
    start = re.search(r"^\*\*\* ?START OF.*$", s, re.M)
    end = re.search(r"^(\*\*\* ?END OF|End of (the )?Project Gutenberg)", s, re.M)
    if not start or not end:
        sys.exit("moby_dick: Gutenberg start/end markers not found")
    return tidy(s[start.end():end.start()].encode())


def fortunes(pk):
    d = os.path.join(pk.root("fortunes"), "usr/share/games/fortunes")
    parts = []
    for p in sorted(glob.glob(os.path.join(d, "*.u8"))):
        if os.path.basename(p) in ("ascii-art.u8", "translate-me.u8"):
            continue  # pictures made of characters; a mixed-language file
        text = read_text(p).decode("utf-8", errors="replace")
        parts.append("\n\n".join(c.strip("\n") for c in re.split(r"^%$", text, flags=re.M)).encode())
    return join_docs(parts)


def jargon(pk):
    return tidy(read_text(os.path.join(pk.root("jargon-text"), "usr/share/doc/jargon-text/jargon.txt.gz")))


def dictd(pk, package, name):
    # dictd's .dict.dz is gzip-compatible; the "00-database-*" entries are metadata.
    text = read_text(os.path.join(pk.root(package), f"usr/share/dictd/{name}.dict.dz")).decode(
        "utf-8", errors="replace")
    keep = [line for line in text.split("\n") if not line.startswith("00-database")
            and not line.startswith("00database")]
    return tidy("\n".join(keep).encode())


def dasher(pk):
    return tidy(read_text(os.path.join(pk.root("dasher-data"),
                                       "usr/share/dasher/training_english_GB.txt")))


def python_docs(pk):
    root = os.path.join(pk.root("python3.11-doc"), "usr/share/doc/python3.11/html/_sources")
    files = sorted(glob.glob(os.path.join(root, "**", "*.rst.txt"), recursive=True))
    return join_docs(read_text(p) for p in files)


def linux_docs(pk):
    root = os.path.join(pk.root("linux-doc-6.1"), "usr/share/doc/linux-doc-6.1/Documentation")
    files = sorted(p for p in glob.glob(os.path.join(root, "**", "*.rst.gz"), recursive=True)
                   if "/translations/" not in p)
    return join_docs(read_text(p) for p in files)


SOURCES = [
    ("kjv", kjv),
    ("moby_dick", moby_dick),
    ("fortunes", fortunes),
    ("jargon", jargon),
    ("devil", lambda pk: dictd(pk, "dict-devil", "devil")),
    ("dasher", dasher),
    ("python_docs", python_docs),
    ("foldoc", lambda pk: dictd(pk, "dict-foldoc", "foldoc")),
    ("linux_docs", linux_docs),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "data", "mix"))
    ap.add_argument("--only", default="", help="comma-separated source names (default: all)")
    a = ap.parse_args()
    only = set(filter(None, a.only.split(",")))
    os.makedirs(a.out, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        pk = Packages(work)
        for name, make in SOURCES:
            if only and name not in only:
                continue
            before = set(pk.versions)
            text = make(pk)
            path = os.path.join(a.out, f"{name}.txt.xz")
            with lzma.open(path + ".tmp", "wb", preset=6) as f:
                f.write(text)
            os.replace(path + ".tmp", path)
            used = " ".join(f"{p}={pk.versions[p]}" for p in sorted(set(pk.versions) - before))
            rows.append((name, used, len(text), hashlib.sha256(text).hexdigest()))
            print(f"{name:12s} {len(text):>10d} bytes -> {path} ({os.path.getsize(path)} bytes xz) "
                  f"[{used}]", flush=True)
    if not only:
        with open(os.path.join(a.out, "MANIFEST.tsv"), "w") as f:
            f.write("source\tpackages\tbytes\tsha256\n")
            for r in rows:
                f.write("\t".join(map(str, r)) + "\n")
    print(f"total {sum(r[2] for r in rows)} bytes of text in {a.out}")


if __name__ == "__main__":
    main()

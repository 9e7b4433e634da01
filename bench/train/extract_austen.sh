#!/usr/bin/env bash
# Reproduces bench/train/data/austen_{train,heldout}.txt from the Debian package
# r-cran-janeaustenr (Jane Austen's six novels as R character vectors, one line per element;
# public-domain text from Project Gutenberg). Needs apt-get and R (apt-get install
# r-base-core). Held out: Persuasion (the last novel written), never seen in training.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get download r-cran-janeaustenr
dpkg-deb -x r-cran-janeaustenr_*.deb x
mkdir -p "$here/data"
Rscript - "$work/x/usr/lib/R/site-library/janeaustenr/data/Rdata" "$here/data" <<'RS'
args <- commandArgs(trailingOnly = TRUE)
e <- new.env()
lazyLoad(args[1], envir = e)
write_books <- function(names, path) {
  con <- file(path, open = "wb")
  for (n in names) writeLines(enc2utf8(get(n, envir = e)), con, sep = "\n", useBytes = TRUE)
  close(con)
}
write_books(c("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey"),
            file.path(args[2], "austen_train.txt"))
write_books(c("persuasion"), file.path(args[2], "austen_heldout.txt"))
RS
wc -c "$here/data/austen_train.txt" "$here/data/austen_heldout.txt"

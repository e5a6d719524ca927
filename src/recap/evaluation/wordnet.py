"""WordNet for NLTK's METEOR, offline: laid out from Debian's wordnet files into an NLTK data
folder (with the `lexnames` file NLTK needs and Debian does not ship) and read once."""

from __future__ import annotations

import os
import shutil
from functools import lru_cache
from pathlib import Path

from recap.utils import RecapError

# WordNet 3.0's 45 lexicographer files (the `lexnames` file NLTK's reader needs and Debian's
# wordnet-base does not ship; the list is fixed by the WordNet 3.0 database format, lexnames(5WN)).
# Syntactic category: 1 noun, 2 verb, 3 adjective, 4 adverb.
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_LEX_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
# Files NLTK's WordNetCorpusReader opens (index.sense and cntlist.rev only for sense keys/counts).
_WORDNET_FILES = tuple(
    f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj", "adv")
) + ("noun.exc", "verb.exc", "adj.exc", "adv.exc", "index.sense", "cntlist.rev")
DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")


def default_nltk_data_dir() -> Path:
    """Where recap lays out NLTK data it builds: $RECAP_CACHE/nltk_data or ~/.cache/recap/."""
    root = os.environ.get("RECAP_CACHE") or Path.home() / ".cache" / "recap"
    return Path(root) / "nltk_data"


def ensure_wordnet(cache_dir: str | os.PathLike | None = None, source: Path | None = None) -> Path:
    """Lay out Debian's WordNet 3.0 as NLTK data (`<cache_dir>/corpora/wordnet/`); return cache_dir.

    NLTK's path sandbox refuses `/usr/share/wordnet` itself, resolves symlinks and refuses
    hard-linked files, so the 36 MB are copied into a folder that is then put on NLTK's search
    path. Debian lacks the `lexnames` file; it is written from WordNet 3.0's fixed list.
    Needs the Debian packages `wordnet-base` and `wordnet-sense-index` (the Makefile installs them).
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_nltk_data_dir()
    source = source or DEBIAN_WORDNET_DIR
    target = cache_dir / "corpora" / "wordnet"
    if (target / "lexnames").is_file() and all((target / f).is_file() for f in _WORDNET_FILES):
        return cache_dir
    missing = [f for f in _WORDNET_FILES if not (source / f).is_file()]
    if missing:
        raise RecapError(
            f"WordNet is missing for METEOR (NLTK): {source} lacks {', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''}. Install the Debian packages: "
            "`apt-get install wordnet-base wordnet-sense-index` (or put NLTK's own "
            "corpora/wordnet on NLTK_DATA)."
        )
    target.mkdir(parents=True, exist_ok=True)
    for name in _WORDNET_FILES:
        dst = target / name
        if dst.exists():
            continue
        tmp = target / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        shutil.copyfile(source / name, tmp)
        os.replace(tmp, dst)
    lines = [
        f"{i:02d}\t{name}\t{_LEX_CATEGORY[name.split('.')[0]]}" for i, name in enumerate(_LEXNAMES)
    ]
    (target / "lexnames").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return cache_dir


def load_wordnet(nltk_data_dir: str | os.PathLike | None = None):
    """A WordNet reader: NLTK's own corpus when installed, otherwise Debian's laid out by
    `ensure_wordnet` (in `nltk_data_dir`, default `default_nltk_data_dir()`).

    Loaded eagerly, so a missing WordNet fails now, not mid-evaluation (NLTK's lazy loader would
    even pass a test on identical strings without ever opening it). Cached per folder.
    """
    import nltk

    if nltk_data_dir is None:
        try:
            return _wordnet_reader(str(Path(str(nltk.data.find("corpora/wordnet"))).resolve()))
        except LookupError:
            nltk_data_dir = default_nltk_data_dir()
    data_dir = ensure_wordnet(Path(nltk_data_dir).resolve())
    # NLTK only opens corpora under its data path (its sandbox); registering the folder there is
    # the documented way to add one. Idempotent.
    if str(data_dir) not in nltk.data.path:
        nltk.data.path.append(str(data_dir))
    return _wordnet_reader(str(data_dir / "corpora" / "wordnet"))


@lru_cache(maxsize=4)
def _wordnet_reader(corpus_dir: str):
    import warnings

    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    with warnings.catch_warnings():
        # "multilingual functions are not available": METEOR needs English only.
        warnings.simplefilter("ignore", UserWarning)
        reader = WordNetCorpusReader(corpus_dir, None)
    reader.synsets("music")  # force the lazy parts to load now
    return reader

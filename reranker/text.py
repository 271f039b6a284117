"""The one place where catalog fields become text.

Indexing, training and serving all call these functions, so a model never sees product text
shaped differently from what it learned on.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence

#: Separator between the title and each labelled attribute in model text.
FIELD_SEPARATOR = " | "

#: Default BM25 tokenisation: lowercase, maximal runs of ASCII letters or of digits, apart, so
#: that "60W" gives "60" and "w" as "60 watt" gives "60" and "watt" (and "18V", "2x4" likewise).
#: Letters and digits together (``[a-z0-9]+``, indexes built before the seventeenth session)
#: found fewer judged products: dev recall in the hybrid top 100 0.749 → 0.755 (held-out train
#: queries 0.737 → 0.743), the default's end-to-end NDCG@10 +0.006 dev, +0.002 held-out
#: (``training/REPORT.md``). An index keeps the pattern it was built with.
DEFAULT_TOKEN_PATTERN = r"[a-z]+|[0-9]+"


def product_text(
    title: str,
    fields: Mapping[str, str | None],
    field_names: Sequence[str] | None = None,
) -> str:
    """Text a cross-encoder reads for a product: the title first, then labelled attributes.

    ``field_names`` selects and orders the attributes (default: all of ``fields`` in their
    order); missing or blank values are left out.

    >>> product_text("Cordless Drill", {"brand": "DEWALT", "color": None}, ["brand", "color"])
    'Cordless Drill | brand: DEWALT'
    """
    names = list(fields) if field_names is None else field_names
    parts = [title.strip()]
    for name in names:
        value = fields.get(name)
        if value is not None and str(value).strip():
            parts.append(f"{name}: {str(value).strip()}")
    return FIELD_SEPARATOR.join(parts)


def searchable_text(title: str, fields: Mapping[str, str | None]) -> str:
    """Text the first stage indexes: the title and the attribute values, without labels."""
    values = [title] + [str(v) for v in fields.values() if v is not None and str(v).strip()]
    return " ".join(values)


#: Stemmer of new indexes: Snowball's English (Porter 2), so "drills" finds "drill".
DEFAULT_STEMMER = "english"


class BM25Tokenizer:
    """Lowercasing regex tokenizer for BM25, optionally stemming each token with a Snowball
    stemmer; its settings are stored in the index manifest (an index without a stemmer setting
    was built without one)."""

    def __init__(
        self,
        pattern: str = DEFAULT_TOKEN_PATTERN,
        lowercase: bool = True,
        stemmer: str | None = DEFAULT_STEMMER,
    ) -> None:
        self.pattern = pattern
        self.lowercase = lowercase
        self.stemmer = stemmer
        self._regex = re.compile(pattern)
        self._stem = _stemmer(stemmer) if stemmer else None

    def __call__(self, text: str) -> list[str]:
        words = self.words(text)
        return [self._stem(w) for w in words] if self._stem else words

    def words(self, text: str) -> list[str]:
        """The tokens before stemming."""
        return self._regex.findall(text.lower() if self.lowercase else text)

    def stem(self, word: str) -> str:
        """A word's token (its stem; the word without a stemmer)."""
        return self._stem(word) if self._stem else word

    def settings(self) -> dict[str, object]:
        return {"pattern": self.pattern, "lowercase": self.lowercase, "stemmer": self.stemmer}

    @classmethod
    def from_settings(cls, settings: Mapping[str, object]) -> BM25Tokenizer:
        stemmer = settings.get("stemmer")
        return cls(
            pattern=str(settings["pattern"]),
            lowercase=bool(settings["lowercase"]),
            stemmer=str(stemmer) if stemmer else None,
        )


def _stemmer(language: str):
    """A memoised ``word → stem`` function of Snowball's stemmer for ``language``."""
    import snowballstemmer

    try:
        stemmer = snowballstemmer.stemmer(language)
    except KeyError:
        raise ValueError(
            f"no Snowball stemmer for {language!r}; one of: "
            f"{', '.join(snowballstemmer.algorithms())}"
        ) from None
    return functools.lru_cache(maxsize=1 << 18)(stemmer.stemWord)

"""Commands built on the library: analysis, benchmark, zero-shot debiasing, converters."""

"""Layer 7, what a reader sees: tables (`tables`), the claims report (`claims`), figures (`figures`) and the
headline metrics DVC compares (`headline`)."""

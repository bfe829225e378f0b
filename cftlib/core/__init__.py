"""Layer 0, what every other layer stands on: validated params (`config`), atomic file io (`io`), the project
root (`paths`), progress lines (`progress`), devices and torchrun (`launch`), local/hub model lookup (`hub`)."""

"""Layer 6, the numbers: accuracy and shortcut gaps (`accuracy`), relevance alignment with masks (`alignment`),
Student-t intervals and paired differences over seeds (`intervals`)."""

"""Layer 6, the numbers: accuracy and shortcut gaps (`accuracy`), relevance alignment with masks (`alignment`),
Student-t intervals and paired differences over seeds (`intervals`), what scoring needs of a run (`runs`: its seen
classes, its weights' digest) and the examples of the qualitative figure (`examples`)."""

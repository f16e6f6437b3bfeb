"""Learning: the data (``data``), one ``build_model`` for every precision and topology (``models``) and one
training function for every stage (``training``). Imports only the pure configurations and ``hwmodel``'s
quantizer vocabulary."""

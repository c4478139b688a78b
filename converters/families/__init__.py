"""One module per conversion family, each declaring `FAMILY = Family(...)`; discovered by
`converters.registry`, never listed by hand."""

"""The bottom layer: what a survey sends (its description), the Avro schemas and wire formats."""

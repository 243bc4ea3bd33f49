"""Adapters to the outside: Kafka, HBase, the Parquet file store, delivery and access control."""

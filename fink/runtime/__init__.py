"""The Spark runtime: the JVM artifacts, the session, streaming supervision, metrics and the monitor."""

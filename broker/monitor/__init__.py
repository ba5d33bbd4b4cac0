"""`zbroker monitor`: the broker watched through its control protocol (watch), figures
derived from STATUS (derive), Prometheus' text format (prometheus), and the live web
dashboard (web, static/). `zbroker top` shares watch and derive."""

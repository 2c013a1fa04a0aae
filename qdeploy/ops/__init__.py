"""Operating a running fleet: control/inspect over Redis (`control`), what Redis says about
nodes and queues (`fleet`), `qdeploy multi` (`multi`) and the web dashboard (`dashboard`)."""

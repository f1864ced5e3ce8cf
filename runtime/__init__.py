"""The ground floor every package stands on: errors, labels, atomic writes, checkpoints, devices, dvclive logging, resumable runs, the config base."""

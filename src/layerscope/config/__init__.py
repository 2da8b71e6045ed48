"""The run's configuration: its schema (``schema``), where the config files are (``paths``)."""

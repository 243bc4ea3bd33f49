"""Operations, the top layer: the command line, the notebook runner, local services, dashboard and demo."""

"""Progress bars for the long phases (training, evaluation, conversion, export): tqdm on stderr with
the rate and the estimated time left. Shown only when asked for and stderr is a terminal, so logs,
pipes and ``--json`` output stay clean."""

from tqdm.auto import tqdm


def progress_bar(iterable=None, *, show: bool = True, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, silent unless ``show`` and stderr is a terminal (tqdm's ``disable=None``)."""
    return tqdm(iterable, disable=None if show else True, **kwargs)


"""Views stores (format version 4): V stored augmented views of every transfer sample.

``augment`` (policies: ``rrc-flip``, ``module:function``) -> ``transfer`` (``ViewTransfer``:
the views stage one feeds the teachers; rebuilding a row's view from its stored parameters) ->
``dataset`` (``StoredViews``, ``ViewTargetDataset``: one stored view per sample per epoch).

The public names are re-exported at ``softlabels``; this package imports nothing on import.
"""

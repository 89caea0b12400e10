"""MMSA data: the files of CMU-MOSI / CMU-MOSEI (and CH-SIMS), read, validated, batched; synthetic ones.

``load_mmsa(path)`` reads an ``aligned_50.pkl`` / ``unaligned_50.pkl`` once and returns an
:class:`MMSADataset` whose :class:`Split` objects yield :class:`Batch` tuples of tensors ready
for ``DMD(config)(text, audio, vision)``. The files are described in the book's data-format page.

* :mod:`~dmd_core.data.dataset`: the types (``Batch``, ``Split``, ``MMSADataset``, ``DataFormatError``);
* :mod:`~dmd_core.data.loading`: ``load_mmsa``; :mod:`~dmd_core.data.validate`: what it checks;
* :mod:`~dmd_core.data.pickles`: safe reading and portable writing of the pickles;
* :mod:`~dmd_core.data.mmap`: the memory-mapped cache behind ``mmap_dir``;
* :mod:`~dmd_core.data.synth`: synthetic MMSA files with a documented planted structure
  (:mod:`~dmd_core.data.synth_spec` their parameters, :mod:`~dmd_core.data.synth_vocab` their words).
"""

from .dataset import BERT_VOCAB_SIZE, SPLITS, Batch, DataFormatError, MMSADataset, Split
from .loading import check_split, data_reference, load_mmsa, open_dataset
from .pickles import dump_mmsa, read_pickle

__all__ = ["DataFormatError", "Batch", "Split", "MMSADataset", "load_mmsa", "open_dataset", "check_split",
           "data_reference", "read_pickle", "dump_mmsa", "SPLITS", "BERT_VOCAB_SIZE"]  # fmt: skip

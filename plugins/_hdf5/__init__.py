"""Internals of the HDF5 file writer plugin (``framechain.plugins.hdf5_writer``).

Modules: ``codecs`` (chunk compressors matching the HDF5 filters),
``config`` (validated writer configuration), ``distribution`` (odin-data's
multi-writer frame arithmetic), ``session`` (what start_writing fixes; file
names), ``h5file`` (one open HDF5 file), ``master`` (the virtual-dataset
master file), ``engine`` (the writer thread and the compression pool).
"""

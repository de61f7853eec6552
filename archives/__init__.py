"""Web archives as bytes and records: reading WARC and ARC files, and the byte sources
under them. No Beam, no torch; imports only the standard library and ``contract/``
(the layers: ``contract/`` <- ``archives/`` <- ``filters/`` <- ``transforms/`` <- ``pipeline/``).

* :mod:`archives.gzip_members` the decompressed stream: gzip members, damage, resync;
* :mod:`archives.records`      the reader: WARC/ARC records and their HTTP part
  (:class:`~archives.records.ArchiveRecord`, :func:`~archives.records.iter_archive`);
* :mod:`archives.decoding`     an HTTP body's chunked and Content-Encoding codings, capped;
* :mod:`archives.ranges`       byte ranges of one file and their sync points;
* :mod:`archives.writer`       writing a WARC ``response`` record;
* :mod:`archives.remote`       HTTP(S) inputs streamed with resume.

Opening an input by path through Beam's file systems is ``transforms/filesystems.py``.
"""

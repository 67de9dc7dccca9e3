"""Hostile and broken input over real loopback associations.

Every case is sent by a real SCU (pynetdicom; dcmtk's storescu plays the honest client) to a node
running in this process, and must

- get a clear C-STORE status with an ErrorComment (0xC000 cannot parse, 0xA900 data set differs
  from the request, 0xC001 missing or invalid UID, 0xA700 out of resources), or be stored
  (0x0000) and then end FAILED, when a worker processes its study, with a reason that names the
  image ("input fault: image 1 of 1 cannot be used: ...");
- leave the node serving: the whole battery runs against one node, and after each case a good
  client (dcmtk's storescu) on a new association stores an image;
- put no file anywhere but the node's own random names under the data directory (instances/,
  results/, an empty tmp/ and the database), whatever path a UID spells;
- keep memory bounded: the process's peak resident memory (the SCP and the worker run here) may
  not grow by more than MEMORY_BOUND while the case is received and processed.

By kind of hostile input:

- test_malformed_data_sets.py: headers and encodings that are broken or lie (the battery, part one);
- test_malformed_pixel_data.py: pixel data and the decoding path (the battery, part two);
- test_oversize_input.py: data sets over the configured maximum, deflate bombs at ingest;
- test_association_abuse.py: refused negotiation, stalled associations, oversized PDUs, aborted
  transfers;
- test_fuzzed_input.py: property-based tests that mutate valid data sets (byte flips,
  truncation, element values) through the ingest header parsing (node/receive/headers.py
  ``header_of``) and the decoding path (``DicomPreprocessor``) and accept only the node's own
  error types, never another exception or a hang.

The data sets are built by tests/support/hostile.py, the checks after each case are in
tests/support/hostile_node.py, the nodes and the engine are this package's fixtures (conftest.py).

Comments marked "pynetdicom/pydicom alone" describe what the libraries do by themselves and
what node/receive/scp.py does about it.
"""

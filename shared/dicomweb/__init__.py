"""One DICOMweb implementation for the edge and the cloud (PS3.18).

Each side supplies a `source.DicomwebSource` (rows and bytes, scope applied) and its HTTP
adapter; everything here is pure or takes its I/O as arguments:
- `media`: Accept / Content-Type parsing, media types per transfer syntax, negotiation.
- `multipart`: response framing and the streaming multipart/related reader for STOW.
- `metadata`: DICOM JSON of headers, BulkDataURIs.
- `frames`: frames and bulk data in the negotiated transfer syntax.
- `render`: rendered and thumbnail images and their query parameters.
- `stream`: the body of an instances response, segment by segment.
- `stow`: STOW-RS status and response body.
- `urls`: the public base URL (configured, trusted proxies' headers, or the request).
"""

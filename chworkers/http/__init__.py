"""A small HTTP/1.1 server (``server``), with request framing (``framing``), slow-client
watching (``watch``) and limits (``limits``), under the push intake and the metrics
exposition."""

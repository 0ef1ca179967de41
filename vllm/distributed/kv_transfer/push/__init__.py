"""The push connector: producer ranks push KV to consumer ranks as it is computed."""

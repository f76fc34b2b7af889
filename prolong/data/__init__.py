"""Data pipeline: raw corpora -> tokenized documents -> packed, mixed, ready-to-train shards.

sources.py        streaming readers (jsonl/parquet/hf_disk/text_dir/code_repos), repository documents
text_files.py     the one reader of JSONL and text files (.gz/.zst): BOM, UTF-8 and JSON errors located
chat.py           chat-template rendering with an assistant-only loss mask
tokenize.py       parallel, deterministic tokenization into a flat token file; tokenizer identity
pack.py           long chunks, length subsets, short packing with carry-over, SFT packing, length sampling
format.py         the shard format (PackedSequence, ShardWriter, ShardReader; open_shard for either kind)
mds.py            MDS datasets (ProLong's released data) read in place: packs as they are, documents to pack
mds_build.py      `prolong data build` for MDS domains: check every pack once, link it for the mixture
mixture.py        StageMixture: sample g of a stage as a function of (seed, g); rank shares
build.py          `prolong data build`: all of the above per stage, resumable per shard
stats.py          Table-13 statistics and the length histogram
tokenizer_train.py, local_corpus.py   offline building blocks for demos and tests
commands.py       the CLI functions
"""

"""The lab as files and git: creating and finding a lab, its git work tree, staging a proposal in
a scratch copy, anchors of the ledger head, and preparing data with pinned hashes."""

"""The ground floor: config, labels, storage, records, photo decoding, artifact layouts, errors.

It imports nothing else of the project; every other floor may import it.
"""

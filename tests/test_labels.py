from core.labels import SPLITS, LabelSchema, assign_split, build_schema

ROWS = [
    {"id": "1", "sub": "Topwear", "art": "Tshirts", "season": "Summer", "gender": "Men"},
    {"id": "2", "sub": "Topwear", "art": "Shirts", "season": "", "gender": "Women"},
    {"id": "3", "sub": "Shoes", "art": "Heels", "season": "Winter", "gender": "Women"},
    {"id": "4", "sub": "Bottomwear", "art": "Tshirts", "season": "Summer", "gender": "Men"},
]


def test_schema_vocabularies_tree_and_encoding(tmp_path):
    schema = build_schema(ROWS, "sub", "art", ("season", "gender"))
    assert schema.categories == ["Bottomwear", "Shoes", "Topwear"]
    assert schema.subcategories == ["Heels", "Shirts", "Tshirts"]
    assert schema.attributes == ["season=Summer", "season=Winter", "gender=Men", "gender=Women"]
    assert schema.attribute_groups == {"season": [0, 1], "gender": [2, 3]}
    # Tshirts occurs under two categories: the tree keeps both.
    assert schema.tree == {"Bottomwear": ["Tshirts"], "Shoes": ["Heels"], "Topwear": ["Shirts", "Tshirts"]}
    assert schema.allowed_pairs() == [(0, 2), (1, 0), (2, 1), (2, 2)]
    assert schema.encode(ROWS[1]) == (2, 1, [3])  # empty season: no positive in that group
    assert schema.sizes == {"category": 3, "subcategory": 3, "attributes": 4}
    assert LabelSchema.load(schema.save(tmp_path / "labels.json")) == schema


def test_rare_attribute_values_are_left_out_of_the_vocabulary():
    schema = build_schema(ROWS, "sub", "art", ("season",), min_attribute_count=2)
    assert schema.attributes == ["season=Summer"]


def test_split_is_deterministic_and_stable_under_additions():
    ids = [str(i) for i in range(5000)]
    first = {i: assign_split(i, "Tshirts", 0.8, 0.1, "salt") for i in ids}
    # Same ids, computed again among many more rows: the assignment of each id does not change.
    again = {i: assign_split(i, "Tshirts", 0.8, 0.1, "salt") for i in ids + [str(i) for i in range(5000, 9000)]}
    assert all(again[i] == first[i] for i in ids)
    shares = {s: sum(v == s for v in first.values()) / len(ids) for s in SPLITS}
    assert abs(shares["train"] - 0.8) < 0.03 and abs(shares["validation"] - 0.1) < 0.02

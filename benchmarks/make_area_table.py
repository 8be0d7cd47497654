"""Regenerate nnunet_vasculature/postprocess/_area_table.py from PyPI surface-distance (test extra)."""
from pathlib import Path


def main():
    from surface_distance import lookup_tables
    table = lookup_tables.create_table_neighbour_code_to_surface_area((1, 1, 1))
    target = Path(__file__).resolve().parents[1] / "nnunet_vasculature" / "postprocess" / "_area_table.py"
    head, _, _ = target.read_text().partition("AREA = np.array([")
    rows = ["    " + ", ".join(repr(float(x)) for x in table[i:i + 4]) + "," for i in range(0, 256, 4)]
    target.write_text(head + "AREA = np.array([\n" + "\n".join(rows) + "\n], dtype=np.float64)\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()

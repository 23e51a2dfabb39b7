"""VRML ``.wrl`` reader (VRML97 / 2.0, and the VRML 1.0 subset scanners write); no writer.

The whole scene graph is parsed: every ``IndexedFaceSet`` (``coord Coordinate { point [...] }``,
``coordIndex [...]`` with ``-1`` ending each polygon) is collected, ``DEF``/``USE`` shared nodes
are resolved, ``Transform`` nodes (translation, rotation, scale, scaleOrientation, center) are
applied, polygons are fan-triangulated and ``ccw FALSE`` faces are flipped. In VRML 1.0 an
``IndexedFaceSet`` uses the most recent ``Coordinate3`` (1.0 transforms are not applied).
Comments (``#`` outside strings), commas, ``PROTO``/``EXTERNPROTO`` and ``ROUTE`` are handled.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvf.errors import file_error
from mvf.io.mesh import Mesh

SUFFIXES = (".wrl", ".vrml")


# ----------------------------------------------------------------------------- VRML
_COMMENT_OR_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|#[^\n\r]*')
_TOKEN = re.compile(r'[{}\[\]]|"(?:[^"\\]|\\.)*"|[^\s,{}\[\]"]+')
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$|0[xX][0-9a-fA-F]+$")


class _VrmlError(Exception):
    pass


@dataclass
class _Node:
    type: str
    fields: dict
    children: list  # VRML 1.0 style unnamed child nodes, in order


class _Parser:
    """Recursive-descent parser producing `_Node` trees; numeric lists are parsed in bulk."""

    def __init__(self, text: str):
        self.text = _COMMENT_OR_STRING.sub(lambda m: m.group(0) if m.group(0)[0] == '"' else " ", text)
        self.tokens = [(m.group(0), m.start()) for m in _TOKEN.finditer(self.text)]
        self.i = 0
        self.defs: dict[str, _Node] = {}

    # -- token helpers
    def peek(self, k: int = 0) -> str | None:
        j = self.i + k
        return self.tokens[j][0] if j < len(self.tokens) else None

    def next(self) -> str:
        if self.i >= len(self.tokens):
            raise _VrmlError("unexpected end of file")
        tok = self.tokens[self.i][0]
        self.i += 1
        return tok

    def expect(self, tok: str) -> None:
        got = self.next()
        if got != tok:
            raise _VrmlError(f"expected '{tok}', found '{got[:20]}'")

    def skip_balanced(self, open_tok: str, close_tok: str) -> None:
        self.expect(open_tok)
        depth = 1
        while depth:
            tok = self.next()
            depth += (tok == open_tok) - (tok == close_tok)

    # -- grammar
    def parse_scene(self) -> list:
        nodes = []
        while self.peek() is not None:
            node = self.parse_statement()
            if node is not None:
                nodes.append(node)
        return nodes

    def parse_statement(self):
        tok = self.peek()
        if tok in ("PROTO", "EXTERNPROTO"):
            self.next()
            self.next()  # name
            self.skip_balanced("[", "]")
            if tok == "PROTO":
                self.skip_balanced("{", "}")
            else:
                self.parse_value()  # url
            return None
        if tok == "ROUTE":
            for _ in range(4):  # ROUTE a.b TO c.d
                self.next()
            return None
        return self.parse_node()

    def parse_node(self) -> _Node | None:
        tok = self.next()
        if tok == "NULL":
            return None
        if tok == "USE":
            name = self.next()
            if name not in self.defs:
                raise _VrmlError(f"USE of undefined node '{name}'")
            return self.defs[name]
        def_name = None
        if tok == "DEF":
            def_name = self.next()
            tok = self.next()
        if not re.match(r"[A-Za-z_]", tok):
            raise _VrmlError(f"expected a node, found '{tok[:20]}'")
        node = _Node(tok, {}, [])
        if def_name is not None:
            self.defs[def_name] = node
        self.expect("{")
        while True:
            tok = self.peek()
            if tok is None:
                raise _VrmlError(f"unterminated {node.type} node")
            if tok == "}":
                self.next()
                break
            if tok in ("PROTO", "EXTERNPROTO", "ROUTE"):
                self.parse_statement()
                continue
            if tok in ("DEF", "USE") or self.peek(1) == "{":
                child = self.parse_node()  # VRML 1.0 unnamed child
                if child is not None:
                    node.children.append(child)
                continue
            name = self.next()
            if self.peek() == "IS":  # inside a PROTO body
                self.next()
                self.next()
                continue
            node.fields[name] = self.parse_value()
        return node

    def parse_value(self):
        tok = self.peek()
        if tok is None:
            raise _VrmlError("unexpected end of file")
        if tok == "[":
            return self.parse_list()
        if tok in ("DEF", "USE", "NULL") or self.peek(1) == "{":
            return self.parse_node()
        if tok in ("TRUE", "FALSE"):
            self.next()
            return tok == "TRUE"
        if tok[0] == '"':
            self.next()
            return tok[1:-1]
        if _NUMBER.match(tok):
            vals = []
            while self.peek() is not None and _NUMBER.match(self.peek()):
                vals.append(float(self.next()))
            return vals
        self.next()  # an enum-like bare word (VRML 1.0 fields); keep it as a string
        return tok

    def parse_list(self):
        start = self.tokens[self.i][1]
        end = self.text.find("]", start)
        body = self.text[start + 1:end] if end >= 0 else ""
        if end >= 0 and not any(c in body for c in '{["'):
            # Fast path: a purely numeric list.
            n_tok = 0
            while self.tokens[self.i + 1 + n_tok][1] < end:
                n_tok += 1
            self.i += n_tok + 2
            try:
                return np.array(body.replace(",", " ").split(), dtype=np.float64)
            except ValueError:
                raise _VrmlError("non-numeric entry in a numeric list") from None
        self.expect("[")
        items = []
        while self.peek() != "]":
            if self.peek() is None:
                raise _VrmlError("unterminated list")
            value = self.parse_value()
            if isinstance(value, list):
                items.extend(value)
            elif value is not None:
                items.append(value)
        self.next()
        return items


def _axis_angle(r) -> np.ndarray:
    """``(3, 3)`` rotation of a VRML ``x y z angle`` (radians) field; identity for a zero axis."""
    from scipy.spatial.transform import Rotation  # imported here: 0.4 s every mvf.io user would pay

    x, y, z, a = (float(v) for v in r)
    n = np.linalg.norm([x, y, z])
    return np.eye(3) if n < 1e-12 else Rotation.from_rotvec(np.array([x, y, z]) * (a / n)).as_matrix()


def _vec(fields: dict, key: str, default: tuple) -> np.ndarray:
    v = np.asarray(fields.get(key, default), dtype=np.float64).ravel()
    if v.size != len(default):
        raise _VrmlError(f"field '{key}' needs {len(default)} numbers")
    return v


def _transform_matrix(fields: dict) -> np.ndarray:
    """4x4 matrix of a VRML97 Transform: T * C * R * SR * S * SR^-1 * C^-1."""
    def h(m3=None, t=None):
        m = np.eye(4)
        if m3 is not None:
            m[:3, :3] = m3
        if t is not None:
            m[:3, 3] = t
        return m

    t = _vec(fields, "translation", (0, 0, 0))
    c = _vec(fields, "center", (0, 0, 0))
    r = _axis_angle(_vec(fields, "rotation", (0, 0, 1, 0)))
    sr = _axis_angle(_vec(fields, "scaleOrientation", (0, 0, 1, 0)))
    s = np.diag(_vec(fields, "scale", (1, 1, 1)))
    return h(t=t) @ h(t=c) @ h(r) @ h(sr) @ h(s) @ h(sr.T) @ h(t=-c)


_GROUPS = ("Group", "Transform", "Anchor", "Billboard", "Collision", "Separator", "TransformSeparator",
           "Switch", "LOD", "Shape", "WWWAnchor")


def _collect(nodes: list, matrix: np.ndarray, state: dict, out: list) -> None:
    for node in nodes:
        if not isinstance(node, _Node):
            continue
        kind = node.type
        if kind == "Coordinate3":  # VRML 1.0 state
            state["coord"] = node
        if kind == "IndexedFaceSet":
            out.append((node, matrix, state.get("coord")))
            continue
        m = matrix @ _transform_matrix(node.fields) if kind == "Transform" else matrix
        kids: list = []
        if kind == "Switch":
            choice = int(np.ravel(node.fields.get("whichChoice", [-1]))[0])
            options = node.fields.get("choice", node.fields.get("children", []))
            kids = [options[choice]] if 0 <= choice < len(options) else []
        elif kind == "LOD":
            level = node.fields.get("level", node.fields.get("children", []))
            kids = list(level[:1]) if isinstance(level, list) else []
        else:
            for key in ("children", "geometry", "proxy"):
                value = node.fields.get(key)
                kids.extend(value if isinstance(value, list) else [value])
        kids.extend(node.children)
        if kind in _GROUPS or node.children:
            sub_state = dict(state) if kind in ("Separator", "TransformSeparator") else state
            _collect(kids, m, sub_state, out)


def _face_set_triangles(node: _Node, fallback_coord) -> tuple[np.ndarray, np.ndarray]:
    coord = node.fields.get("coord", fallback_coord)
    if not isinstance(coord, _Node) or "point" not in coord.fields:
        raise _VrmlError("IndexedFaceSet without Coordinate points")
    pts = np.asarray(coord.fields["point"], dtype=np.float64)
    if pts.size % 3:
        raise _VrmlError(f"Coordinate point list has {pts.size} numbers, not a multiple of 3")
    pts = pts.reshape(-1, 3)
    idx = np.asarray(node.fields.get("coordIndex", []), dtype=np.float64).ravel()
    if idx.size and not np.all(idx == np.round(idx)):
        raise _VrmlError("coordIndex holds non-integers")
    idx = idx.astype(np.int64)
    bad = (idx < -1) | (idx >= len(pts))
    if bad.any():
        raise _VrmlError(f"coordIndex {int(idx[bad][0])} out of range for {len(pts)} points")
    # Split into polygons at -1 (the last one may lack its -1) and fan-triangulate.
    ends = np.flatnonzero(idx == -1)
    starts = np.r_[0, ends + 1]
    stops = np.r_[ends, idx.size]
    tris = []
    for a, b in zip(starts, stops):
        poly = idx[a:b]
        if len(poly) >= 3:
            tris.append(np.stack([np.full(len(poly) - 2, poly[0]), poly[1:-1], poly[2:]], 1))
    faces = np.concatenate(tris) if tris else np.zeros((0, 3), np.int64)
    if node.fields.get("ccw", True) is False:
        faces = faces[:, ::-1]
    return pts, faces


def read(path: Path) -> Mesh:
    """Read every IndexedFaceSet of a VRML file into one triangle mesh (see module docstring)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise file_error(path, f"cannot read ({e.strerror})") from None
    if not text.lstrip().startswith("#VRML"):
        raise file_error(path, "not a VRML file (no '#VRML' header)")
    try:
        parser = _Parser(text)
        scene = parser.parse_scene()
        found: list = []
        _collect(scene, np.eye(4), {}, found)
        if not found:
            raise _VrmlError("no IndexedFaceSet in the file")
        verts, faces, offset = [], [], 0
        for node, matrix, coord3 in found:
            pts, tri = _face_set_triangles(node, coord3)
            pts = pts @ matrix[:3, :3].T + matrix[:3, 3]
            if np.linalg.det(matrix[:3, :3]) < 0:
                tri = tri[:, ::-1]
            verts.append(pts)
            faces.append(tri + offset)
            offset += len(pts)
    except _VrmlError as e:
        raise file_error(path, f"unreadable VRML ({e})") from None
    except (IndexError, ValueError, TypeError) as e:
        raise file_error(path, f"unreadable VRML ({type(e).__name__})") from None
    return Mesh(np.concatenate(verts), np.concatenate(faces).astype(np.int64))

"""`pedidos.validation`: the field rules of contract §4 (new order) and §5 (commands).

Values are refused, never clamped, and every refusal names the field at fault.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from pedidos.protocol.framing import Decoder
from pedidos.protocol.replies import ACCION_DESCONOCIDA, MENSAJE_INVALIDO, PEDIDO_INVALIDO, RequestError
from pedidos.protocol.validation import (
    ESTADOS,
    MAX_ID,
    MAX_TOKEN_CHARS,
    Command,
    NewOrder,
    careful_order,
    order_text,
    parse_request,
    plain_order,
)

ORDER = {"cliente": "Juan Pérez", "productos": ["pan", "agua"], "direccion": "Av. Siempre Viva 742"}
MISSING = object()


def order(**changes: Any) -> dict[str, Any]:
    value = dict(ORDER)
    for name, new in changes.items():
        if new is MISSING:
            value.pop(name, None)
        else:
            value[name] = new
    return value


def refused(value: Any) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_request(value)
    error = info.value
    assert isinstance(error.mensaje, str) and error.mensaje.strip()
    assert error.reply()["ok"] is False and error.reply()["error"] == error.code
    return error


def refused_order(value: Any, field: str) -> None:
    error = refused(value)
    assert error.code == PEDIDO_INVALIDO, error.mensaje
    assert field in error.mensaje, f"{error.mensaje!r} does not name {field!r}"


def refused_command(value: Any, field: str) -> None:
    error = refused(value)
    assert error.code == MENSAJE_INVALIDO, error.mensaje
    assert field in error.mensaje, f"{error.mensaje!r} does not name {field!r}"


# --- what kind of request --------------------------------------------------------


def decoded(text: str) -> Any:
    (value,) = Decoder().feed(text.encode("utf-8"))
    return value


# A colon in a text and an object inside each take the closer look; the
# decoder's slow path (the request cut in two) checks too.
@pytest.mark.parametrize(
    ("text", "field", "check"),
    [
        ('{"accion": "consultar", "id": 1, "accion": "cancelar"}', "accion", refused_command),
        ('{"accion": "esperar", "id": 1, "timeout": 1, "id": 2}', "id", refused_command),
        ('{"cliente": "A", "productos": ["p"], "direccion": "d", "cliente": "B"}', "cliente", refused_order),
        (
            '{"cliente": "A:B", "productos": ["p"], "direccion": "d", "direccion": "e"}',
            "direccion",
            refused_order,
        ),
        (
            '{"cliente": "A", "productos": [{"x": 1}], "direccion": "d", "cliente": "B"}',
            "cliente",
            refused_order,
        ),
        (
            '{"cliente": "A", "productos": ["p"],\n "direccion": "d", "cliente": "A"}',
            "cliente",
            refused_order,
        ),
    ],
)
def test_a_field_given_twice_is_refused_naming_it(text, field, check):
    check(decoded(text), field)
    slow = Decoder()
    assert slow.feed(text[:10].encode()) == []
    (value,) = slow.feed(text[10:].encode())
    check(value, field)


def test_the_same_key_in_different_objects_or_colons_in_texts_are_fine():
    assert parse_request(decoded('{"cliente": "A: 1", "productos": ["p:q"], "direccion": "d:"}')) == NewOrder(
        "A: 1", ("p:q",), "d:", None
    )


@pytest.mark.parametrize("value", [[], [ORDER], "pedido", 17, 1.5, True, None])
def test_json_that_is_not_an_object_is_mensaje_invalido(value):
    assert refused(value).code == MENSAJE_INVALIDO


def test_object_without_accion_is_an_order():
    assert parse_request(ORDER) == NewOrder("Juan Pérez", ("pan", "agua"), "Av. Siempre Viva 742", None)


def test_object_with_accion_is_a_command():
    assert parse_request({"accion": "estadisticas"}) == Command("estadisticas", {})


# --- new order: §4 ------------------------------------------------------------------


def test_values_are_stored_trimmed():
    parsed = parse_request(
        {
            "cliente": "  Ana \t",
            "productos": [" pan ", "\nagua\n"],
            "direccion": " Calle 1 ",
            "referencia": "  r-1  ",
        }
    )
    assert parsed == NewOrder("Ana", ("pan", "agua"), "Calle 1", "r-1")


@pytest.mark.parametrize(
    ("field", "limit"),
    [("cliente", 200), ("direccion", 500), ("referencia", 100)],
)
def test_text_field_length_boundaries(field, limit):
    ok = parse_request(order(**{field: "x" * limit}))
    assert getattr(ok, field) == "x" * limit
    # counted after trimming
    assert getattr(parse_request(order(**{field: "  " + "x" * limit + "  "})), field) == "x" * limit
    # counted in characters, not bytes
    assert getattr(parse_request(order(**{field: "é" * limit})), field) == "é" * limit
    assert getattr(parse_request(order(**{field: "x"})), field) == "x"
    refused_order(order(**{field: "x" * (limit + 1)}), field)
    refused_order(order(**{field: "é" * (limit + 1)}), field)


@pytest.mark.parametrize("field", ["cliente", "direccion", "referencia"])
@pytest.mark.parametrize("value", ["", " ", " \t\n ", 5, 1.5, True, False, ["a"], {"a": "b"}])
def test_text_field_empty_or_wrong_type(field, value):
    refused_order(order(**{field: value}), field)


@pytest.mark.parametrize("field", ["cliente", "productos", "direccion"])
def test_required_field_missing_or_null(field):
    refused_order(order(**{field: MISSING}), field)
    refused_order(order(**{field: None}), field)


def test_referencia_is_optional_and_null_is_absent():
    assert parse_request(order()).referencia is None
    assert parse_request(order(referencia=None)).referencia is None
    assert parse_request(order(referencia=None)) == parse_request(order())


def test_productos_count_boundaries():
    assert len(parse_request(order(productos=["p"])).productos) == 1
    assert parse_request(order(productos=[f"p{i}" for i in range(100)])).productos[-1] == "p99"
    refused_order(order(productos=[]), "productos")
    refused_order(order(productos=[f"p{i}" for i in range(101)]), "productos")


@pytest.mark.parametrize("value", ["pan", 3, True, {"pan": 1}])
def test_productos_must_be_a_list(value):
    refused_order(order(productos=value), "productos")


def test_each_producto_length_boundaries():
    assert parse_request(order(productos=["x" * 200, " y "])).productos == ("x" * 200, "y")
    assert parse_request(order(productos=["  " + "é" * 200 + "  "])).productos == ("é" * 200,)
    refused_order(order(productos=["ok", "x" * 201]), "producto 2 de 'productos'")


@pytest.mark.parametrize("item", ["", "   ", None, 1, 1.5, True, ["pan"], {"n": "pan"}])
def test_each_producto_must_be_non_empty_text(item):
    refused_order(order(productos=["pan", item]), "producto 2 de 'productos'")


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"cliente": "Ana\x00"}, "'cliente'"),
        ({"direccion": "\x00Calle 1"}, "'direccion'"),
        ({"referencia": "r-\x00-1"}, "'referencia'"),
        ({"productos": ["pan", "ag\x00ua"]}, "producto 2 de 'productos'"),
    ],
)
def test_a_nul_character_in_any_text_is_refused_by_field(changes, named):
    # Valid JSON, but PostgreSQL's text cannot hold it: refused before storage,
    # by both the quick and the careful check.
    refused_order(order(**changes), named)
    assert "nulo" in refused(order(**changes)).mensaje
    assert parse_request(order(cliente="Ana \\u0000")).cliente == "Ana \\u0000"  # the six characters are fine


@pytest.mark.parametrize(
    ("request_", "named"),
    [
        ({"accion": "listar", "cliente": "Ana\x00"}, "'cliente'"),
        ({"accion": "listar", "contiene": "\x00"}, "'contiene'"),
        ({"accion": "consultar", "referencia": "r-\x00-1"}, "'referencia'"),
    ],
)
def test_a_nul_character_in_a_commands_text_is_refused_by_field(request_, named):
    # No stored order holds one, and PostgreSQL would refuse the query itself.
    error = refused(request_)
    assert error.code == MENSAJE_INVALIDO and named in error.mensaje and "nulo" in error.mensaje, error


@pytest.mark.parametrize("field", ["dirección", "Cliente", "producto", "id", "estado", "", "extra"])
def test_unknown_order_field_is_refused_by_name(field):
    refused_order(order(**{field: "x"}), f"'{field}'")


def test_order_text_used_by_the_client_applies_the_same_rules():
    assert order_text({"cliente": " Ana "}, "cliente", 200) == "Ana"
    with pytest.raises(RequestError) as info:
        order_text({"cliente": " "}, "cliente", 200)
    assert info.value.code == PEDIDO_INVALIDO


# --- commands: §5 -------------------------------------------------------------------


@pytest.mark.parametrize("accion", ["consultar", "cancelar", "esperar"])
def test_id_accepts_positive_integers(accion):
    for good in (1, 17, MAX_ID):
        assert parse_request({"accion": accion, "id": good}).args["id"] == good


@pytest.mark.parametrize("accion", ["consultar", "cancelar", "esperar"])
@pytest.mark.parametrize("bad", [0, -1, "1", True, False, 2**63, 1.0, 1.5, [1], {"id": 1}, ""])
def test_id_refuses_anything_else(accion, bad):
    refused_command({"accion": accion, "id": bad}, "'id'")


@pytest.mark.parametrize("accion", ["consultar", "cancelar", "esperar"])
def test_id_is_required(accion):
    refused_command({"accion": accion}, "'id'")
    refused_command({"accion": accion, "id": None}, "'id'")


def test_esperar_timeout_default_and_boundaries():
    assert parse_request({"accion": "esperar", "id": 1}).args == {"id": 1, "timeout": 30}
    for good in (0, 0.5, 1, 30, 3599.9, 3600, 3600.0):
        assert parse_request({"accion": "esperar", "id": 1, "timeout": good}).args["timeout"] == good


@pytest.mark.parametrize("bad", [3601, 3600.5, 10**6, -1, -0.1, "30", True, False, [30], 1e999])
def test_esperar_timeout_out_of_range_or_wrong_type(bad):
    refused_command({"accion": "esperar", "id": 1, "timeout": bad}, "'timeout'")


def test_listar_defaults():
    assert parse_request({"accion": "listar"}).args == {
        "estado": None,
        "cliente": None,
        "contiene": None,
        "desde_id": 0,
        "limite": 100,
        "orden": "asc",
    }


def test_listar_limite_boundaries():
    for good in (1, 100, 1000):
        assert parse_request({"accion": "listar", "limite": good}).args["limite"] == good
    for bad in (0, 1001, -1, 1.0, "10", True):
        refused_command({"accion": "listar", "limite": bad}, "'limite'")


def test_listar_desde_id_boundaries():
    for good in (0, 1, MAX_ID):
        assert parse_request({"accion": "listar", "desde_id": good}).args["desde_id"] == good
    for bad in (-1, 2**63, 0.0, "0", False):
        refused_command({"accion": "listar", "desde_id": bad}, "'desde_id'")


def test_listar_estado_filter():
    for estado in ESTADOS:
        assert parse_request({"accion": "listar", "estado": estado}).args["estado"] == estado
    assert set(ESTADOS) == {"pendiente", "en proceso", "listo", "cancelado", "fallido"}
    for bad in ("terminado", "LISTO", "listo ", "", 1, ["listo"], True):
        refused_command({"accion": "listar", "estado": bad}, "'estado'")


def test_listar_cliente_filter_is_trimmed_like_the_stored_value():
    assert parse_request({"accion": "listar", "cliente": "  Ana "}).args["cliente"] == "Ana"
    padded = "  " + "x" * 200 + "  "  # an order could carry this cliente: it is stored as 200 x
    assert parse_request({"accion": "listar", "cliente": padded}).args["cliente"] == "x" * 200
    for bad in ("", "   ", "x" * 201, 5, ["Ana"], True):
        refused_command({"accion": "listar", "cliente": bad}, "'cliente'")


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ({"accion": "consultar", "id": 1, "timeout": 5}, "timeout"),
        ({"accion": "esperar", "id": 1, "limite": 5}, "limite"),
        ({"accion": "listar", "id": 1}, "id"),
        ({"accion": "cancelar", "id": 1, "motivo": "x"}, "motivo"),
        ({"accion": "estadisticas", "id": 1}, "id"),
        ({"accion": "consultar", "id": 1, "cliente": "A"}, "cliente"),
    ],
)
def test_unknown_field_in_a_command_is_mensaje_invalido(request_, field):
    refused_command(request_, f"'{field}'")


@pytest.mark.parametrize("accion", [1, None, True, ["consultar"], {"a": 1}, 1.5])
def test_accion_that_is_not_a_string_is_mensaje_invalido(accion):
    refused_command({"accion": accion, "id": 1}, "'accion'")


@pytest.mark.parametrize("accion", ["borrar", "", "CONSULTAR", " consultar", "consultar "])
def test_accion_that_names_no_command_is_accion_desconocida(accion):
    error = refused({"accion": accion, "id": 1})
    assert error.code == ACCION_DESCONOCIDA
    assert json.dumps(accion) in error.mensaje  # as the client wrote it


@pytest.mark.parametrize(
    ("value", "written"),
    [(True, "no true."), ("5", 'no "5".'), (1.5, "no 1.5."), ([1], "no [1].")],
)
def test_a_refused_value_is_shown_as_the_client_wrote_it(value, written):
    error = refused({"accion": "consultar", "id": value})
    assert error.mensaje.endswith(written), error.mensaje


def test_an_id_out_of_range_is_told_the_range():
    error = refused({"accion": "consultar", "id": 2**63})
    assert f"entre 1 y {2**63 - 1}, no {2**63}." in error.mensaje, error.mensaje


def test_accion_decides_before_order_fields():
    error = refused(dict(ORDER, accion="nada"))
    assert error.code == ACCION_DESCONOCIDA


def test_every_command_parses():
    assert parse_request({"accion": "consultar", "id": 17}) == Command(
        "consultar", {"id": 17, "referencia": None}
    )
    assert parse_request({"accion": "consultar", "referencia": " ana-1 "}) == Command(
        "consultar", {"id": None, "referencia": "ana-1"}
    )
    assert parse_request({"accion": "cancelar", "id": 17}) == Command("cancelar", {"id": 17})
    assert parse_request({"accion": "reintentar", "id": 17}) == Command("reintentar", {"id": 17})
    assert parse_request({"accion": "esperar", "id": 17, "timeout": 2}) == Command(
        "esperar", {"id": 17, "timeout": 2}
    )
    assert parse_request(
        {"accion": "listar", "estado": "listo", "cliente": "Ana", "desde_id": 3, "limite": 10}
    ) == Command(
        "listar",
        {"estado": "listo", "cliente": "Ana", "contiene": None, "desde_id": 3, "limite": 10, "orden": "asc"},
    )
    assert parse_request({"accion": "estadisticas"}) == Command("estadisticas", {})


@pytest.mark.parametrize(
    "request_, names",
    [
        ({"accion": "consultar"}, ("'id'", "'referencia'")),
        ({"accion": "consultar", "id": 1, "referencia": "a"}, ("'id'", "'referencia'")),
        ({"accion": "consultar", "id": None, "referencia": None}, ("'id'", "'referencia'")),
        ({"accion": "consultar", "referencia": ""}, ("'referencia'",)),
        ({"accion": "consultar", "referencia": "r" * 101}, ("'referencia'",)),
        ({"accion": "consultar", "referencia": 5}, ("'referencia'",)),
        ({"accion": "reintentar"}, ("'id'",)),
        ({"accion": "reintentar", "id": 0}, ("'id'",)),
        ({"accion": "reintentar", "id": 1, "timeout": 2}, ("'timeout'",)),
    ],
)
def test_consultar_takes_one_key_and_reintentar_an_id(request_, names):
    error = refused(request_)
    assert error.code == MENSAJE_INVALIDO
    for name in names:
        assert name in error.mensaje


def test_autenticar_token_length_boundaries_and_the_token_never_echoed():
    for good in ("x", "t" * MAX_TOKEN_CHARS):
        assert parse_request({"accion": "autenticar", "token": good}) == Command(
            "autenticar", {"token": good}
        )
    for bad in ("", "s" * (MAX_TOKEN_CHARS + 1), 5, ["secreto"]):
        refused_command({"accion": "autenticar", "token": bad}, "'token'")
        assert "ss" not in refused({"accion": "autenticar", "token": bad}).mensaje


def test_error_message_stays_short_for_huge_values():
    error = refused({"accion": "consultar", "id": "x" * 100_000})
    assert len(error.mensaje) < 300


def _edges(limit: int) -> list[Any]:
    """Texts on both sides of each rule of a field with this limit, and a non-text."""
    return ["a", " a\t", "\u3000b\u00a0", "ñ" * limit, f" {'ñ' * limit}\n", "ñ" * (limit + 1), "", " \r\n", 5]


PRODUCT_LISTS = [["pan"], ["pan", " agua "], ["ñ" * 200], ["ñ" * 201], ["pan", ""], ["pan", 1]]
PRODUCT_LISTS += [[], ["p"] * 100, ["p"] * 101, "pan", {"a": 1}, None, MISSING]


@pytest.mark.parametrize("extra", [MISSING, "x"])
def test_the_quick_order_check_agrees_with_the_careful_one_at_every_edge(extra):
    # Orders take the quick check first; the careful one only explains a refusal.
    # Every combination of edge values: the two must accept exactly the same.
    accepted = refusals = 0
    for cliente, productos, direccion, referencia in itertools.product(
        [*_edges(200), None, MISSING], PRODUCT_LISTS, [*_edges(500), MISSING], [*_edges(100), None, MISSING]
    ):
        value = order(cliente=cliente, productos=productos, direccion=direccion, referencia=referencia)
        if extra is not MISSING:
            value["extra"] = extra
        quick = plain_order(value)
        try:
            careful = careful_order(value)
        except RequestError:
            assert quick is None, value
            refusals += 1
        else:
            assert quick == careful, value
            accepted += 1
    assert refusals > 0 and (accepted > 0) == (extra is MISSING)

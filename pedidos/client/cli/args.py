"""The command line of `cliente.py`: its options, their help and their checks, in Spanish.

argparse writes its own words (`usage:`, `error:`, `expected one argument`) in
English; `spanish` translates them while it parses, so that everything a
person reads is Spanish. A usage error exits 2, argparse's own way.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence

from pedidos import __version__
from pedidos.client.access import ENV_VAR, chosen_token
from pedidos.client.cli.invocation import SCRIPT
from pedidos.client.cli.spanish import SpanishParser, argparse_in_spanish, estado_arg, number
from pedidos.client.records import DEFAULT_TIMEOUT
from pedidos.domain import DEFAULT_PORT, ESTADOS

# Each mode of the command line, as `Namespace.mode`.
ORDER, FILE, GET, CANCEL, LIST, STATS = "pedido", "archivo", "consultar", "cancelar", "listar", "estadisticas"
GET_REF, RETRY = "consultar-referencia", "reintentar"

EXAMPLES = """\
ejemplos:
  python3 cliente.py                            pregunta cliente, productos y dirección
  python3 cliente.py --cliente "Juan Pérez" --productos pan agua --direccion "Av. Siempre Viva 742"
  python3 cliente.py --cliente Ana --productos pan --direccion "Calle 1" --referencia A-1 --esperar
  python3 cliente.py --archivo ejemplos/pedidos.jsonl   un pedido JSON por línea, o una lista JSON
  python3 cliente.py --archivo ejemplos/pedidos.jsonl --referencias-auto   reenviarlo no duplica
  python3 cliente.py --archivo ejemplos/pedidos.jsonl --desde-linea 3   solo desde la línea 3
  cat ejemplos/*.jsonl | python3 cliente.py --archivo - --json > respuestas.jsonl
  python3 cliente.py --consultar 17 --esperar   sigue el pedido 17 hasta que termine
  python3 cliente.py --cancelar 18
  python3 cliente.py --consultar-referencia A-1 muestra el pedido cuya referencia es A-1
  python3 cliente.py --reintentar 19 --esperar  vuelve a intentar el pedido fallido 19
  python3 cliente.py --listar --estado listo --cliente Ana --limite 20 --desde-id 100
  python3 cliente.py --listar --contiene pérez --recientes   "Juan PÉREZ" también; los más nuevos antes
  python3 cliente.py --estadisticas --json
  python3 cliente.py --host ::1 --port 9000 --timeout 3 --estadisticas
  python3 cliente.py --host pedidos.example --tls --cafile cert.pem --token "$TOKEN" --listar
  python3 cliente.py --version                  la versión de pedidos

El token también puede venir de la variable de entorno PEDIDOS_TOKEN, que el servidor no lee.

estado de salida: 0 bien; 1 el servidor rechazó la petición (o el token); 2 error de uso;
3 el servidor no responde, no se puede conectar o falla TLS; 4 con --esperar, el pedido
terminó fallido o cancelado; 130 interrumpido (Ctrl-C).
"""


def _examples(typed: str) -> str:
    """EXAMPLES with the command as typed, its comments still in one column."""
    shift = len(f"python3 {SCRIPT}") - len(typed)
    lines = []
    for line in EXAMPLES.splitlines():
        line = line.replace(f"python3 {SCRIPT}", typed)
        if shift > 0:  # the first gap of three or more spaces is a comment's column
            line = re.sub(r"(?<=\S)(   +)(?=\S)", lambda m: m.group(1) + " " * shift, line, count=1)
        lines.append(line)
    return "\n".join(lines) + "\n"


def build_parser(prog: str = SCRIPT) -> argparse.ArgumentParser:
    with argparse_in_spanish():  # `-h`'s help and the "options" title are written here
        return _build_parser(prog)


def _build_parser(prog: str) -> argparse.ArgumentParser:
    # The examples show the command as it is typed: `python3 cliente.py` or `pedidos-cliente`.
    typed = f"python3 {SCRIPT}" if prog == SCRIPT else prog
    parser = SpanishParser(
        prog=prog,
        usage="%(prog)s [opciones]   (todas, con ejemplos: %(prog)s --help)",
        description="Cliente del servidor de pedidos: envía pedidos, uno o miles, y consulta su estado.",
        epilog=_examples(typed),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"pedidos {__version__}", help="muestra la versión y termina"
    )
    order_id = number(int, 1, None, "un número de pedido (entero positivo)")
    net = parser.add_argument_group("conexión")
    net.add_argument(
        "--host", default="localhost", help="servidor: nombre, IPv4 o IPv6 (por defecto localhost)"
    )
    net.add_argument(
        "--port",
        type=number(int, 1, 65535, "un puerto (1 a 65535)"),
        default=DEFAULT_PORT,
        metavar="PUERTO",
        help=f"puerto del servidor (por defecto {DEFAULT_PORT})",
    )
    net.add_argument(
        "--timeout",
        type=number(float, 0.001, 86400, "un número de segundos entre 0.001 y 86400"),
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"segundos que se espera cada respuesta de la red (por defecto {DEFAULT_TIMEOUT:g})",
    )
    net.add_argument(
        "--token",
        help=f"token de acceso, si el servidor lo pide (por defecto, el de la variable {ENV_VAR})",
    )
    net.add_argument(
        "--tls", action="store_true", help="conecta con TLS y comprueba el certificado del servidor"
    )
    net.add_argument(
        "--cafile",
        metavar="ARCHIVO",
        help="con --tls: certificado (PEM) de la autoridad que firma el del servidor, o el del propio "
        "servidor si es autofirmado (por defecto, las autoridades del sistema)",
    )
    one = parser.add_argument_group("un pedido", "Sin ellos y con una terminal, los pregunta uno a uno.")
    one.add_argument(
        "--cliente",
        metavar="NOMBRE",
        help="nombre del cliente (con --listar: solo los pedidos de ese cliente)",
    )
    one.add_argument("--productos", nargs="+", metavar="PRODUCTO", help="uno o más productos")
    one.add_argument("--direccion", metavar="DIRECCIÓN", help="dirección de entrega")
    one.add_argument(
        "--referencia", metavar="CLAVE", help="clave propia del pedido: reenviarlo no lo duplica"
    )
    one.add_argument(
        "--esperar",
        action="store_true",
        help="sigue el pedido (enviado o --consultar) hasta que termine: pendiente, en proceso, listo",
    )
    many = parser.add_argument_group("muchos pedidos")
    many.add_argument(
        "--archivo",
        metavar="ARCHIVO",
        help="envía todos los pedidos del archivo (JSON Lines o una lista JSON; '-' lee la entrada "
        "estándar), con barra de progreso y un resumen",
    )
    many.add_argument(
        "--referencias-auto",
        action="store_true",
        help="con --archivo: da a cada pedido sin 'referencia' una hecha del contenido del archivo y "
        "su línea, así que reenviar el mismo archivo (tras una interrupción) nunca duplica",
    )
    many.add_argument(
        "--desde-linea",
        type=number(int, 1, None, "un número de línea (1 o más)"),
        metavar="N",
        help="con --archivo: envía solo los pedidos que empiezan en la línea N o después (lo que "
        "quedó sin enviar de un envío cortado)",
    )
    ask = parser.add_argument_group("consultas")
    ask.add_argument("--consultar", type=order_id, metavar="ID", help="muestra el pedido ID")
    ask.add_argument(
        "--consultar-referencia",
        metavar="CLAVE",
        help="muestra el pedido cuya referencia (la clave propia que se le dio al enviarlo) es CLAVE",
    )
    ask.add_argument("--cancelar", type=order_id, metavar="ID", help="cancela el pedido ID si está pendiente")
    ask.add_argument(
        "--reintentar",
        type=order_id,
        metavar="ID",
        help="vuelve a poner en cola el pedido ID si está fallido, con todos sus intentos",
    )
    ask.add_argument(
        "--listar", action="store_true", help="tabla de pedidos, del más antiguo al más nuevo (o --recientes)"
    )
    ask.add_argument(
        "--contiene",
        metavar="TEXTO",
        help="con --listar: solo los clientes cuyo nombre contiene TEXTO, sin distinguir mayúsculas "
        "(--cliente pide el nombre exacto)",
    )
    ask.add_argument(
        "--recientes",
        action="store_true",
        help="con --listar: del más nuevo al más antiguo (con --desde-id, los de número menor que ID)",
    )
    ask.add_argument(
        "--estado", type=estado_arg, help=f"con --listar: solo ese estado ({', '.join(ESTADOS)})"
    )
    ask.add_argument(
        "--limite",
        type=number(int, 1, None, "un entero positivo"),
        metavar="N",
        help="con --listar: cuántos pedidos como mucho (por defecto 100)",
    )
    ask.add_argument(
        "--desde-id",
        type=number(int, 0, None, "un entero no negativo"),
        default=0,
        metavar="ID",
        help="con --listar: solo los pedidos de número mayor que ID (con --recientes, menor)",
    )
    ask.add_argument(
        "--estadisticas", action="store_true", help="pedidos por estado, workers, cola, conexiones"
    )
    out = parser.add_argument_group("salida")
    out.add_argument(
        "--json",
        action="store_true",
        help="escribe las respuestas del servidor como JSON, una por línea (para programas)",
    )
    return parser


# The options whose text goes to the server, which takes UTF-8 only.
SENT_AS_TEXT = (
    "token",
    "cliente",
    "productos",
    "direccion",
    "referencia",
    "consultar_referencia",
    "contiene",
)
NOT_UTF8 = "no es texto UTF-8 (¿la terminal usa otra codificación?)"


def is_utf8(text: str) -> bool:
    """False for text holding bytes that were no UTF-8: Python hands them over
    as lone surrogates (from argv, or a terminal in the C locale), which no
    request can carry."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse(argv: Sequence[str] | None, has_terminal: bool, prog: str = SCRIPT) -> argparse.Namespace:
    """The options, checked as a whole; `mode` says what to do, `ask` whether
    the order must be asked for at the terminal."""
    with argparse_in_spanish():
        parser = _build_parser(prog)
        args = parser.parse_args(argv)
        _check(parser, args, has_terminal)
    return args


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace, has_terminal: bool) -> None:
    chosen = [
        mode
        for mode, given in [
            (FILE, args.archivo is not None),
            (GET, args.consultar is not None),
            (GET_REF, args.consultar_referencia is not None),
            (CANCEL, args.cancelar is not None),
            (RETRY, args.reintentar is not None),
            (LIST, args.listar),
            (STATS, args.estadisticas),
        ]
        if given
    ]
    if len(chosen) > 1:
        parser.error(f"elija una sola acción; se pidieron {', '.join('--' + m for m in chosen)}")
    args.mode = chosen[0] if chosen else ORDER
    fields = {"--productos": args.productos, "--direccion": args.direccion, "--referencia": args.referencia}
    if args.mode != LIST:
        fields["--cliente"] = args.cliente
    misplaced = [name for name, value in fields.items() if value is not None]
    if args.mode != ORDER and misplaced:
        parser.error(f"{', '.join(misplaced)} solo sirve para enviar un pedido, no con --{args.mode}")
    if args.esperar and args.mode not in (ORDER, GET, GET_REF, RETRY):
        parser.error(f"--esperar sigue un pedido enviado o --consultar, no --{args.mode}")
    listing = {
        "--estado": args.estado is not None,
        "--limite": args.limite is not None,
        "--desde-id": args.desde_id != 0,
        "--contiene": args.contiene is not None,
        "--recientes": args.recientes,
    }
    stray = [name for name, given in listing.items() if given]
    if args.mode != LIST and stray:
        parser.error(f"{', '.join(stray)} solo sirve con --listar")
    for name, given in (("--referencias-auto", args.referencias_auto), ("--desde-linea", args.desde_linea)):
        if given and args.mode != FILE:
            parser.error(f"{name} solo sirve con --archivo")
    if args.cafile is not None and not args.tls:
        parser.error("--cafile solo sirve con --tls")
    for name in SENT_AS_TEXT:
        value = getattr(args, name)
        if any(not is_utf8(text) for text in (value if isinstance(value, list) else [value or ""])):
            parser.error(f"opción --{name.replace('_', '-')}: {NOT_UTF8}")
    if not is_utf8(chosen_token(args.token) or ""):
        parser.error(f"la variable {ENV_VAR}: {NOT_UTF8}")
    missing = [f for f in ("cliente", "productos", "direccion") if getattr(args, f) is None]
    args.limite = args.limite or 100
    if args.contiene is not None and not args.contiene.strip():
        parser.error("--contiene necesita un texto que no sea solo espacios")
    args.ask = args.mode == ORDER and bool(missing)
    if args.ask and not has_terminal:
        hint = "; para muchos pedidos, --archivo ARCHIVO (o '-' para la entrada estándar)"
        if len(missing) < 3:
            parser.error(f"al pedido le falta {', '.join('--' + f for f in missing)}")
        parser.error("sin terminal, indique el pedido con --cliente, --productos y --direccion" + hint)

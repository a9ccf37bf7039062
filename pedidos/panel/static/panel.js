// The live panel: reads /eventos (Server-Sent Events) with fetch(), so that it
// can send the token in a header (EventSource cannot), and redraws the page
// from each picture the server sends. Reconnects by itself.
"use strict";

const ESTADOS = ["pendiente", "en proceso", "listo", "cancelado", "fallido"];
const TOKEN_KEY = "pedidos.token"; // sessionStorage: this tab only, never the URL
const VENTANA_S = 600; // the chart's ten minutes; less while the server has been up for less
const VENTANA_MIN_S = 60;
const SILENCIO_MS = 5000; // the server sends at least once a second; past this the link is dead
const $ = (id) => document.getElementById(id);

const serie = new Map(); // second -> [recibidos, terminados]
let generacion = 0; // one live connection at a time; older ones stop on their own
let controlador = null;
let ultimoDato = 0;
let espera = 1000;
let estadoConexion = "conectando";

function setConexion(estado, texto) {
  estadoConexion = estado;
  const el = $("conexion");
  el.dataset.estado = estado;
  el.textContent = texto;
}

function pedirToken(mensaje) {
  setConexion("token", "falta el token");
  $("panel").hidden = true;
  $("acceso").hidden = false;
  $("acceso-error").textContent = mensaje || "";
  $("token").focus();
}

$("acceso-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  conectar();
});

async function conectar() {
  const mia = ++generacion;
  if (controlador) controlador.abort();
  controlador = new AbortController();
  const cabeceras = { Accept: "text/event-stream" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) cabeceras.Authorization = "Bearer " + token;
  let respuesta;
  try {
    respuesta = await fetch("eventos", { headers: cabeceras, signal: controlador.signal, cache: "no-store" });
  } catch (e) {
    return reintentar(mia);
  }
  if (respuesta.status === 401 || respuesta.status === 403) {
    sessionStorage.removeItem(TOKEN_KEY);
    const motivo = !token ? "" : respuesta.status === 403
      ? "Ese token no es de administrador." : "Token no válido.";
    return pedirToken(motivo);
  }
  if (!respuesta.ok || !respuesta.body) return reintentar(mia);
  $("acceso").hidden = true;
  $("panel").hidden = false;
  setConexion("conectado", "en vivo");
  espera = 1000;
  ultimoDato = Date.now();
  const lector = respuesta.body.pipeThrough(new TextDecoderStream()).getReader();
  let pendiente = "";
  try {
    for (;;) {
      const { value, done } = await lector.read();
      if (done || mia !== generacion) break;
      ultimoDato = Date.now();
      pendiente = (pendiente + value).replace(/\r\n?/g, "\n");
      let fin;
      while ((fin = pendiente.indexOf("\n\n")) >= 0) {
        const bloque = pendiente.slice(0, fin);
        pendiente = pendiente.slice(fin + 2);
        const datos = bloque.split("\n").filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
        if (datos) mostrar(JSON.parse(datos));
      }
    }
  } catch (e) {
    // cut off: the server stopped, or the watchdog aborted a silent link
  }
  reintentar(mia);
}

function reintentar(mia) {
  if (mia !== generacion) return;
  setConexion("reconectando", "reconectando…");
  setTimeout(() => { if (mia === generacion) conectar(); }, espera);
  espera = Math.min(espera * 2, 5000);
}

setInterval(() => {
  if (estadoConexion === "conectado" && Date.now() - ultimoDato > SILENCIO_MS && controlador) {
    controlador.abort();
  }
}, 1000);

// --- drawing ------------------------------------------------------------------------

const numero = (n) => Number(n).toLocaleString("es-ES");
const hora = (iso) => (iso ? new Date(iso).toLocaleTimeString("es-ES", { hour12: false }) : "");

function duracion(s) {
  s = Math.floor(s);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${String(m).padStart(2, "0")} min`;
  if (m) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
  return `${s} s`;
}

function celda(fila, texto, clase) {
  const td = fila.insertCell();
  td.textContent = texto;
  if (clase) td.className = clase;
  return td;
}

function insignia(td, estado) {
  const span = document.createElement("span");
  span.className = "estado";
  span.dataset.estado = estado;
  span.textContent = estado;
  td.textContent = "";
  td.appendChild(span);
}

function mostrar(d) {
  const total = ESTADOS.reduce((a, e) => a + d.estados[e], 0);
  const barra = $("barra");
  if (barra.children.length !== ESTADOS.length) {
    barra.textContent = "";
    for (const e of ESTADOS) {
      const s = document.createElement("span");
      s.dataset.estado = e;
      barra.appendChild(s);
    }
  }
  ESTADOS.forEach((e, i) => {
    $("n-" + e.replace(" ", "-")).textContent = numero(d.estados[e]);
    barra.children[i].style.width = total ? (100 * d.estados[e] / total) + "%" : "0";
    barra.children[i].title = `${e}: ${numero(d.estados[e])}`;
  });
  $("conexiones").textContent = numero(d.conexiones);
  $("workers-vivos").textContent = `${d.workers_vivos} de ${d.workers.length}`;
  $("uptime").textContent = duracion(d.uptime_s);
  $("recibidos-total").textContent = numero(d.recibidos_total);
  document.title = `pedidos · ${numero(d.estados.pendiente)} pendientes`;
  dibujarWorkers(d.workers);
  dibujarNodos(d.nodos);
  dibujarUltimos(d.ultimos);
  if (d.completa) serie.clear();
  for (const [t, r, f] of d.serie) serie.set(t, [r, f]);
  dibujarGrafico(Math.floor(d.t), Math.min(VENTANA_S, Math.max(VENTANA_MIN_S, Math.ceil(d.uptime_s))));
}

function dibujarWorkers(workers) {
  const cuerpo = $("workers").tBodies[0];
  cuerpo.textContent = "";
  for (const w of workers) {
    const fila = cuerpo.insertRow();
    fila.dataset.worker = w.worker;
    celda(fila, String(w.worker));
    if (w.pedido === null) {
      celda(fila, "libre", "libre");
      celda(fila, "");
    } else {
      celda(fila, `#${w.pedido}` + (w.mas ? ` (+${numero(w.mas)})` : ""), "pedido");
      celda(fila, `${hora(w.desde)} · hace ${duracion(w.hace_s)}`);
    }
  }
}

// On a shared PostgreSQL database: every live node, and what its busy workers hold.
function dibujarNodos(nodos) {
  $("nodos").hidden = !nodos;
  if (!nodos) return;
  $("nodos-vivos").textContent = nodos.length === 1 ? "1 vivo" : `${nodos.length} vivos`;
  const cuerpo = $("tabla-nodos").tBodies[0];
  cuerpo.textContent = "";
  for (const n of nodos) {
    const fila = cuerpo.insertRow();
    fila.className = "nodo";
    fila.dataset.nodo = n.nodo;
    celda(fila, n.este ? `${n.nodo} (este)` : n.nodo).title = n.nodo;
    celda(fila, numero(n.workers));
    celda(fila, numero(n.conexiones));
    celda(fila, numero(n["en proceso"]));
    celda(fila, hora(n.visto));
    for (const w of n.trabajando || []) {
      const sub = cuerpo.insertRow();
      sub.className = "worker-nodo";
      sub.dataset.nodo = n.nodo;
      sub.dataset.worker = w.worker;
      celda(sub, `worker ${w.worker}`);
      const pedido = `#${w.pedido}` + (w.mas ? ` (+${numero(w.mas)})` : "");
      celda(sub, pedido + (w.desde ? ` · desde ${hora(w.desde)}` : ""), "pedido").colSpan = 4;
    }
  }
}

const vistos = new Set();
function dibujarUltimos(pedidos) {
  const cuerpo = $("ultimos").tBodies[0];
  cuerpo.textContent = "";
  for (const p of pedidos) {
    const fila = cuerpo.insertRow();
    fila.dataset.id = p.id;
    if (vistos.size && !vistos.has(p.id)) fila.className = "nuevo";
    celda(fila, String(p.id));
    celda(fila, p.cliente, "cliente").title = p.cliente;
    insignia(celda(fila, ""), p.estado);
    // On a shared database "1" alone is ambiguous: the node goes with it.
    celda(fila, p.worker === null ? "" : String(p.worker) + (p.nodo ? " · " + p.nodo : ""));
    celda(fila, hora(p.fecha_recibido));
    celda(fila, hora(p.fecha_fin));
  }
  vistos.clear();
  for (const p of pedidos) vistos.add(p.id);
}

function dibujarGrafico(ahora, ventana) {
  const desde = ahora - ventana;
  let maximo = 1;
  for (const [t, v] of serie) {
    if (t <= desde) serie.delete(t);
    else maximo = Math.max(maximo, v[0], v[1]);
  }
  maximo = escala(maximo);
  const puntos = [[], []];
  for (const t of [...serie.keys()].sort((a, b) => a - b)) {
    const x = ((600 * (ventana - (ahora - t))) / ventana).toFixed(1);
    const v = serie.get(t);
    for (const i of [0, 1]) puntos[i].push(`${x},${(200 - (190 * v[i]) / maximo).toFixed(1)}`);
  }
  $("linea-recibidos").setAttribute("points", puntos[0].join(" "));
  $("linea-terminados").setAttribute("points", puntos[1].join(" "));
  const ultimo = serie.get(Math.max(...serie.keys())) || [0, 0];
  $("ahora-recibidos").textContent = numero(ultimo[0]);
  $("ahora-terminados").textContent = numero(ultimo[1]);
  $("maximo").textContent = numero(maximo);
  $("ventana").textContent = ventana >= VENTANA_S ? "últimos 10 minutos" : "desde que arrancó el servidor";
  $("eje-inicio").textContent = "−" + corto(ventana);
  $("eje-medio").textContent = "−" + corto(ventana / 2);
}

// An axis label: "45 s", "5 min".
function corto(s) {
  s = Math.round(s);
  return s < 120 ? `${s} s` : `${Math.round(s / 60)} min`;
}

// A round top for the chart: 1, 2, 5, 10, 20, 50...
function escala(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  return [1, 2, 5, 10].map((k) => k * p).find((k) => k >= v);
}

conectar();

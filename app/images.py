"""The images: window presets, overlays with their opacities and legend, and the three views with sliders."""

from __future__ import annotations

import html
import time

import streamlit as st

from medai.report.rendering import (
    CONSOLIDATION_RGB,
    GGO_RGB,
    LEFT_LUNG_RGB,
    MPR,
    RIGHT_LUNG_RGB,
    WINDOW_PRESETS,
    Layers,
    Plane,
    Window,
    encode_png,
    saliency_colorbar,
)

CUSTOM = "custom"
_PRESET_NAMES = {"lung": "Lung W1500/L-600", "mediastinum": "Mediastinum W400/L40", "bone": "Bone W1800/L400"}
MAIN_PX, SIDE_PX = 512, 400


def controls(mpr: MPR, key: str) -> Layers:
    """Window and overlay controls above the images; returns what to draw."""
    has_overlays = mpr.overlays is not None
    window_col, saliency_col, lungs_col, lesions_col = st.columns([1.3, 1, 1, 1])
    with window_col:
        names = [*WINDOW_PRESETS, CUSTOM]
        preset = st.selectbox("Window", names, format_func=lambda n: _PRESET_NAMES.get(n, "Custom"), key="window")
        if preset == CUSTOM:
            level_col, width_col = st.columns(2)
            level = level_col.number_input("Level (HU)", -2000, 4000, -600, step=10, key="level")
            width = width_col.number_input("Width (HU)", 1, 6000, 1500, step=10, key="width")
            window = Window(float(level), float(width))
        else:
            window = WINDOW_PRESETS[preset]
    help_off = None if has_overlays else "Overlays need the model's result: score this study first."
    # What decided is shown first: the measured opacities when the decision came from them alone, else the
    # network's saliency.
    by_findings = has_overlays and mpr.overlays is not None and mpr.overlays.decided_by_findings
    with saliency_col:
        saliency = st.toggle(
            "Saliency", value=has_overlays and not by_findings, key="saliency", disabled=not has_overlays, help=help_off
        )
        saliency_opacity = st.slider("Saliency opacity", 0.0, 1.0, 0.6, 0.05, key="saliency_opacity")
    with lungs_col:
        lungs = st.toggle("Lung contour", value=False, key="lungs", disabled=not has_overlays, help=help_off)
        crosshair = st.toggle("Crosshair", value=True, key="crosshair")
    with lesions_col:
        lesions = st.toggle("Opacities", value=by_findings, key="lesions", disabled=not has_overlays, help=help_off)
        lesion_opacity = st.slider("Opacity fill", 0.0, 1.0, 0.45, 0.05, key="lesion_opacity")
    return Layers(
        window=window,
        saliency_opacity=saliency_opacity if saliency and has_overlays else 0.0,
        lung_contour=lungs and has_overlays,
        lesion_opacity=lesion_opacity if lesions and has_overlays else 0.0,
        crosshair=crosshair,
    )


def _swatch(colour: tuple[int, int, int], text: str) -> str:
    r, g, b = colour
    return (
        f'<span style="white-space:nowrap;margin-right:14px"><span style="display:inline-block;width:12px;'
        f'height:12px;background:rgb({r},{g},{b});vertical-align:middle;margin-right:4px"></span>'
        f"{html.escape(text)}</span>"
    )


def legend(mpr: MPR, layers: Layers) -> None:
    """What the colours mean, for the overlays that are on."""
    overlays = mpr.overlays
    if overlays is None:
        st.caption(
            "No overlays: this study's numbers come from a results file. Score it to see where the model looked."
        )
        return
    if layers.saliency_opacity > 0:
        bar_col, text_col = st.columns([1, 3])
        bar_col.image(encode_png(saliency_colorbar(160, 12)), output_format="PNG", width="content")
        whose = "the network" if overlays.decided_by_findings else "the model"
        text_col.caption(
            f"Saliency: where {whose} found evidence for **{overlays.saliency_class}**, weak (dark red) to strong "
            "(yellow), lungs only. Model evidence, not a lesion outline."
            + (
                " This model decides from the measured opacities alone; the network's view did not decide."
                if overlays.decided_by_findings
                else ""
            )
        )
    parts = []
    if layers.lung_contour:
        parts += [_swatch(RIGHT_LUNG_RGB, "right lung"), _swatch(LEFT_LUNG_RGB, "left lung")]
    if layers.lesion_opacity > 0:
        parts += [_swatch(GGO_RGB, "ground glass"), _swatch(CONSOLIDATION_RGB, "consolidation")]
    if parts:
        st.markdown("".join(parts), unsafe_allow_html=True)
    if overlays.decided_by_findings:
        st.caption(
            "This model's decision comes from the measured opacities (their burden and pattern): the opacity "
            "overlay is why it said what it said."
        )


def views(mpr: MPR, layers: Layers, key: str) -> None:
    """The axial view large, coronal and sagittal beside it; each with its slice slider (1 = R, A or S)."""
    start = mpr.start_cursor()
    cursor = [st.session_state.get(f"slice:{plane}:{key}", start[plane.normal_axis] + 1) - 1 for plane in Plane]
    main, side = st.columns([5, 4])
    started = time.perf_counter()
    with main:
        _view(mpr, Plane.AXIAL, layers, cursor, key, MAIN_PX)
    with side:
        _view(mpr, Plane.CORONAL, layers, cursor, key, SIDE_PX)
        _view(mpr, Plane.SAGITTAL, layers, cursor, key, SIDE_PX)
    st.caption(
        f"Rendered on the server in {1000 * (time.perf_counter() - started):.0f} ms. Radiological convention: the "
        "patient's right on the image's left; sliders count from the right, the front and the top."
    )


def _view(mpr: MPR, plane: Plane, layers: Layers, cursor: list[int], key: str, size_px: int) -> None:
    n = mpr.slices(plane)
    index = (
        st.slider(f"{plane.value.capitalize()} slice", 1, n, cursor[plane.normal_axis] + 1, key=f"slice:{plane}:{key}")
        - 1
    )
    cursor[plane.normal_axis] = index
    rgb = mpr.render(
        plane,
        index,
        Layers(
            layers.window,
            layers.saliency_opacity,
            layers.lung_contour,
            layers.lesion_opacity,
            layers.crosshair,
            size_px,
        ),
        cursor=(cursor[0], cursor[1], cursor[2]),
    )
    st.image(
        encode_png(rgb),
        caption=f"{plane.value} {index + 1}/{n}  {mpr.position_mm(plane, index)}  {layers.window}",
        output_format="PNG",
        width="content",
    )

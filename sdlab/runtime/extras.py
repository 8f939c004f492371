"""SD WebUI's ``POST /sdapi/v1/extra-single-image`` with the non-model upscalers (Lanczos, Nearest).

Request and answer follow A1111's ``ExtrasSingleImageRequest`` / ``ExtrasSingleImageResponse``
(``modules/api/models.py``): ``resize_mode`` 0 scales by ``upscaling_resize``, 1 resizes to
``upscaling_resize_w`` x ``upscaling_resize_h`` (cropping to fill when ``upscaling_crop``); ``upscaler_1``
``"None"`` leaves the size as it is, as in A1111. Model upscalers (ESRGAN, ...) and face restoration are
refused with 422 naming the field. Mount with ``app.include_router(extras.router())``.
"""

from __future__ import annotations

import base64
import binascii
import io

from fastapi import APIRouter
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

from sdlab.errors import ValidationError

UPSCALERS = {"None": None, "Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}
MAX_SIDE = 8192


class ExtrasSingleImageRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    image: str = ""
    resize_mode: int = Field(0, ge=0, le=1)
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(0, ge=0, le=1)
    codeformer_visibility: float = Field(0, ge=0, le=1)
    codeformer_weight: float = Field(0, ge=0, le=1)
    upscaling_resize: float = Field(2, ge=1, le=8)
    upscaling_resize_w: int = Field(512, ge=1)
    upscaling_resize_h: int = Field(512, ge=1)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(0, ge=0, le=1)
    upscale_first: bool = False


def _decode(data: str) -> Image.Image:
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        image.load()
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError) as exc:
        raise ValidationError("image", f"not a valid base64-encoded PNG/JPEG image ({exc})", 422) from None
    return image


def upscale(req: ExtrasSingleImageRequest) -> tuple[Image.Image, str]:
    """The processed image and A1111's ``html_info`` line."""
    for field in ("upscaler_1", "upscaler_2"):
        if getattr(req, field) not in UPSCALERS:
            raise ValidationError(field, f"{getattr(req, field)!r} is not available on the sdlab runtime; use one of "
                                  f"{list(UPSCALERS)}", 422)
    if req.gfpgan_visibility or req.codeformer_visibility:
        raise ValidationError("gfpgan_visibility", "face restoration is not available on the sdlab runtime; set "
                              "gfpgan_visibility and codeformer_visibility to 0", 422)
    image = _decode(req.image)
    method = UPSCALERS[req.upscaler_1]
    if method is None:
        return image, ""
    if req.resize_mode == 0:
        size = (round(image.width * req.upscaling_resize), round(image.height * req.upscaling_resize))
    else:
        size = (req.upscaling_resize_w, req.upscaling_resize_h)
    if max(size) > MAX_SIDE:
        raise ValidationError("upscaling_resize", f"the result would be {size[0]}x{size[1]}; keep both sides at most "
                              f"{MAX_SIDE}", 422)
    if req.resize_mode == 1 and req.upscaling_crop:
        result = ImageOps.fit(image, size, method)
    else:
        result = image.resize(size, method)
    return result, f"Postprocess upscale to: {size[0]}x{size[1]}, Postprocess upscaler: {req.upscaler_1}"


def router() -> APIRouter:
    api = APIRouter(tags=["sdwebui"])

    @api.post("/sdapi/v1/extra-single-image")
    def extra_single_image(req: ExtrasSingleImageRequest):
        image, info = upscale(req)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return {"html_info": f"<p>{info}</p>" if info else "", "image": base64.b64encode(buf.getvalue()).decode("ascii")}

    @api.get("/sdapi/v1/upscalers")
    def upscalers():
        return [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4 if method else 1}
                for name, method in UPSCALERS.items()]

    return api

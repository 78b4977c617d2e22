"""Decode images to RGB uint8 arrays, converting odd modes and skipping unusable images; read
cached image features."""
import io
from typing import Optional, Tuple

import mmengine.fileio as fileio
import numpy as np
from mmcv.transforms import BaseTransform
from PIL import Image, ImageOps, UnidentifiedImageError
from mmpretrain.registry import TRANSFORMS

from ..bad_samples import (EXTREME_ASPECT_RATIO, IMAGE_TOO_LARGE, IMAGE_TOO_SMALL,
                           MISSING_IMAGE, TRUNCATED_IMAGE, UNDECODABLE_FEATURES,
                           UNDECODABLE_IMAGE, BadSampleError)

# mmcv's names of PIL's resampling filters (mmcv.image.geometric.pillow_interp_codes).
_PIL_RESAMPLE = dict(nearest=Image.Resampling.NEAREST, bilinear=Image.Resampling.BILINEAR,
                     bicubic=Image.Resampling.BICUBIC, box=Image.Resampling.BOX,
                     lanczos=Image.Resampling.LANCZOS, hamming=Image.Resampling.HAMMING)

# Modes whose alpha (or palette transparency) must be flattened onto a background.
_ALPHA_MODES = ('RGBA', 'LA', 'PA', 'RGBa', 'La')


def pil_to_rgb_array(image: Image.Image, background: int = 255) -> np.ndarray:
    """Convert a decoded PIL image of any mode to an RGB uint8 array.

    Grayscale, CMYK, palette and YCbCr go through PIL's converters; transparent images are
    composited onto a uniform ``background`` (a plain ``convert('RGB')`` would expose whatever
    colour hides under alpha=0, often black); 16/32-bit integer and float images are scaled to
    8 bits instead of being clipped at 255.

    Args:
        image (PIL.Image.Image): A loaded image.
        background (int): Grey level (0-255) shown through transparent pixels.

    Returns:
        np.ndarray: H x W x 3 uint8 array.
    """
    mode = image.mode
    if mode == 'P' and 'transparency' in image.info:
        image, mode = image.convert('RGBA'), 'RGBA'
    if mode in _ALPHA_MODES:
        rgba = image.convert('RGBA')
        canvas = Image.new('RGBA', rgba.size, (background, ) * 3 + (255, ))
        return np.array(Image.alpha_composite(canvas, rgba).convert('RGB'))
    if mode.startswith('I') or mode == 'F':
        values = np.asarray(image)
        # 16-bit data (PNG 'I;16*', or 'I' holding 16-bit values) keeps its top byte.
        if mode.startswith('I;16') or (mode == 'I' and values.max(initial=0) > 255):
            gray = (np.clip(values, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
        else:
            gray = np.clip(values, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode != 'RGB':
        image = image.convert('RGB')
    return np.array(image)


def decode_image(data: bytes,
                 where: str = '',
                 max_pixels: Optional[int] = None,
                 max_aspect_ratio: Optional[float] = None,
                 min_size: int = 1,
                 exif_transpose: bool = True):
    """Decode encoded image bytes to a loaded PIL image, checking the size before decoding
    pixels.

    Args:
        data (bytes): The encoded image (JPEG, PNG, WebP, ...).
        where (str): File or sample key, used in error details.
        max_pixels (int, optional): Skip images with more pixels (checked from the header,
            so huge images are never decoded).
        max_aspect_ratio (float, optional): Skip images whose long/short side exceeds this.
        min_size (int): Skip images whose short side is smaller.
        exif_transpose (bool): Apply the EXIF orientation, as viewers do.

    Returns:
        tuple[PIL.Image.Image, str]: The image (EXIF orientation applied) and its PIL mode.

    Raises:
        BadSampleError: ``undecodable_image``, ``truncated_image``, ``image_too_large``,
            ``image_too_small`` or ``extreme_aspect_ratio``.
    """
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
    except Image.DecompressionBombError as error:
        raise BadSampleError(IMAGE_TOO_LARGE, f'{where}: {error}') from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise BadSampleError(UNDECODABLE_IMAGE, f'{where}: {error}') from None
    if max_pixels is not None and width * height > max_pixels:
        raise BadSampleError(IMAGE_TOO_LARGE,
                             f'{where}: {width}x{height} > max_pixels={max_pixels}')
    if min(width, height) < min_size:
        raise BadSampleError(IMAGE_TOO_SMALL, f'{where}: {width}x{height} < min_size={min_size}')
    if max_aspect_ratio is not None and max(width, height) > max_aspect_ratio * min(width, height):
        raise BadSampleError(EXTREME_ASPECT_RATIO,
                             f'{where}: {width}x{height} > max_aspect_ratio={max_aspect_ratio}')
    try:
        image.load()
    except Image.DecompressionBombError as error:
        raise BadSampleError(IMAGE_TOO_LARGE, f'{where}: {error}') from None
    except OSError as error:
        reason = TRUNCATED_IMAGE if 'truncated' in str(error) else UNDECODABLE_IMAGE
        raise BadSampleError(reason, f'{where}: {error}') from None
    except (ValueError, SyntaxError, EOFError) as error:
        raise BadSampleError(UNDECODABLE_IMAGE, f'{where}: {error}') from None
    mode = image.mode
    if exif_transpose:
        try:
            image = ImageOps.exif_transpose(image)
        except Exception:  # noqa: BLE001  a broken EXIF block must not cost the image
            pass
    return image, mode


def decode_image_rgb(data: bytes,
                     where: str = '',
                     max_pixels: Optional[int] = None,
                     max_aspect_ratio: Optional[float] = None,
                     min_size: int = 1,
                     exif_transpose: bool = True):
    """Decode encoded image bytes to an RGB array, checking the size before decoding pixels
    (:func:`decode_image`, then :func:`pil_to_rgb_array`).

    Returns:
        tuple[np.ndarray, str]: H x W x 3 uint8 RGB array and the original PIL mode.

    Raises:
        BadSampleError: As :func:`decode_image`.
    """
    image, mode = decode_image(data, where, max_pixels, max_aspect_ratio, min_size,
                               exif_transpose)
    return rgb_array(image, mode, where), mode


def rgb_array(image: Image.Image, mode: str, where: str = '') -> np.ndarray:
    """:func:`pil_to_rgb_array`, a failure being an ``undecodable_image``."""
    try:
        return pil_to_rgb_array(image)
    except (OSError, ValueError) as error:
        raise BadSampleError(UNDECODABLE_IMAGE, f'{where}: mode {mode}: {error}') from None


@TRANSFORMS.register_module()
class LoadImageRGB(BaseTransform):
    """Decode ``img_bytes`` (shards) or read ``img_path`` (map-style datasets) to RGB.

    **Required keys:** ``img_bytes`` or ``img_path``.
    **Added keys:** ``img`` (H x W x 3 uint8, RGB), ``img_shape``, ``ori_shape``, ``img_mode``
    (the PIL mode before conversion, so conversions can be counted). ``img_bytes`` is dropped.

    Unusable images raise :class:`BadSampleError`; the dataset skips and counts them.

    Args:
        max_pixels (int, optional): Skip images larger than this (default 8192 x 8192).
        max_aspect_ratio (float, optional): Skip images more elongated than this.
        min_size (int): Skip images whose short side is below this.
        backend_args (dict, optional): mmengine file backend arguments for ``img_path``.
    """

    def __init__(self,
                 max_pixels: Optional[int] = 8192 * 8192,
                 max_aspect_ratio: Optional[float] = 20.0,
                 min_size: int = 8,
                 backend_args: Optional[dict] = None) -> None:
        self.max_pixels = max_pixels
        self.max_aspect_ratio = max_aspect_ratio
        self.min_size = min_size
        self.backend_args = backend_args

    def decode(self, results: dict) -> Tuple[Image.Image, str, str]:
        """The decoded PIL image of ``results`` (``img_bytes`` is dropped), its PIL mode and
        the name used in error details."""
        data = results.pop('img_bytes', None)
        where = results.get('img_path') or results.get('key', '')
        if data is None:
            if 'img_path' not in results:
                raise BadSampleError(MISSING_IMAGE, f'{where}: no img_bytes or img_path')
            try:
                data = fileio.get(results['img_path'], backend_args=self.backend_args)
            except FileNotFoundError:
                raise BadSampleError(MISSING_IMAGE, f'{where} does not exist') from None
            except OSError as error:
                raise BadSampleError(MISSING_IMAGE, f'{where}: {error}') from None
        image, mode = decode_image(data, where, self.max_pixels, self.max_aspect_ratio,
                                   self.min_size)
        return image, mode, where

    def transform(self, results: dict) -> dict:
        image, mode, where = self.decode(results)
        img = rgb_array(image, mode, where)
        results['img'] = img
        results['img_shape'] = results['ori_shape'] = img.shape[:2]
        results['img_mode'] = mode
        return results


class LoadImageAndResizedCrop(BaseTransform):
    """:class:`LoadImageRGB` followed by mmpretrain's ``RandomResizedCrop`` with the
    ``'pillow'`` backend, in one step with the same result.

    The two as written copy the decoded image out of PIL into an array, cut the crop from the
    array and copy it back into PIL for the resize; here the crop is cut and resized in PIL
    (about 0.06 ms of a sample's 1.3 ms on one CPU core). The crop's random parameters come
    from the crop transform itself, in the same draws, and an image that is not plain RGB goes
    through the two transforms unchanged. :func:`fuse_transforms` puts it in a pipeline.

    Args:
        load (LoadImageRGB): The loading transform.
        crop (mmpretrain.datasets.transforms.RandomResizedCrop): The crop, ``backend='pillow'``.
    """

    def __init__(self, load: 'LoadImageRGB', crop) -> None:
        self.load = load
        self.crop = crop
        self.resample = _PIL_RESAMPLE[crop.interpolation]

    def transform(self, results: dict) -> dict:
        image, mode, where = self.load.decode(results)
        if image.mode != 'RGB':
            img = rgb_array(image, mode, where)
            results.update(img=img, img_shape=img.shape[:2], ori_shape=img.shape[:2],
                           img_mode=mode)
            return self.crop.transform(results)
        width, height = image.size
        # The crop transform's own draws, from the image's shape only.
        offset_h, offset_w, target_h, target_w = self.crop.rand_crop_params(
            np.empty((height, width, 0), np.uint8))
        # mmcv.imcrop's box, clipped to the image as it clips it.
        left, top = min(max(offset_w, 0), width - 1), min(max(offset_h, 0), height - 1)
        right = min(max(offset_w + target_w - 1, 0), width - 1)
        bottom = min(max(offset_h + target_h - 1, 0), height - 1)
        patch = image.crop((left, top, right + 1, bottom + 1))
        img = np.array(patch.resize(tuple(self.crop.scale[::-1]), self.resample))
        results.update(img=img, img_shape=img.shape, ori_shape=(height, width), img_mode=mode)
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}({self.load!r}, {self.crop!r})'


def fuse_transforms(transforms: list) -> list:
    """``transforms`` with each :class:`LoadImageRGB` that is directly followed by
    mmpretrain's ``RandomResizedCrop(backend='pillow')`` (exactly those classes, not
    subclasses) replaced by one :class:`LoadImageAndResizedCrop` with the same result."""
    from mmpretrain.datasets.transforms import RandomResizedCrop
    fused, index = [], 0
    while index < len(transforms):
        current = transforms[index]
        following = transforms[index + 1] if index + 1 < len(transforms) else None
        if (type(current) is LoadImageRGB and type(following) is RandomResizedCrop
                and following.backend == 'pillow' and following.interpolation in _PIL_RESAMPLE):
            fused.append(LoadImageAndResizedCrop(current, following))
            index += 2
        else:
            fused.append(current)
            index += 1
    return fused

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(max_pixels={self.max_pixels}, '
                f'max_aspect_ratio={self.max_aspect_ratio}, min_size={self.min_size})')


@TRANSFORMS.register_module()
class LoadImageFeatures(BaseTransform):
    """Read cached image features (``KEY.npy`` of a feature-cache shard) instead of an image.

    ``tools/cache_image_features.py`` stores the pooled output of a locked image tower per
    sample; reading them back skips the image tower entirely (LiT training).

    **Required keys:** ``img_bytes`` (the bytes of the sample's ``.npy`` member).
    **Added keys:** ``image_features`` (C float32 array). ``img_bytes`` is dropped.

    The array is read with ``allow_pickle=False``: a shard can never make the loader run code.
    Anything that is not a 1-D float16/float32 array of finite values (of ``dims`` entries,
    when given) raises :class:`BadSampleError`, so the stream skips and counts the sample.

    Args:
        dims (int, optional): Expected feature width C; None accepts any width.
    """

    ACCEPTED_DTYPES = (np.float16, np.float32)

    def __init__(self, dims: Optional[int] = None) -> None:
        self.dims = dims

    def transform(self, results: dict) -> dict:
        data = results.pop('img_bytes', None)
        where = results.get('key', '')
        if data is None:
            raise BadSampleError(MISSING_IMAGE, f'{where}: no cached features (img_bytes)')
        try:
            features = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            # Pickled objects also land here: allow_pickle=False refuses them with ValueError.
            raise BadSampleError(UNDECODABLE_FEATURES,
                                 f'{where}: not a readable .npy array: {error}') from None
        if not isinstance(features, np.ndarray):  # an .npz archive
            raise BadSampleError(UNDECODABLE_FEATURES, f'{where}: expected one .npy array, '
                                 f'got {type(features).__name__}')
        if features.dtype not in self.ACCEPTED_DTYPES or features.ndim != 1:
            raise BadSampleError(UNDECODABLE_FEATURES,
                                 f'{where}: expected a 1-D float16/float32 array, got '
                                 f'{features.dtype} of shape {features.shape}')
        if self.dims is not None and features.shape[0] != self.dims:
            raise BadSampleError(UNDECODABLE_FEATURES,
                                 f'{where}: expected {self.dims} features, got '
                                 f'{features.shape[0]}')
        if not np.isfinite(features).all():
            raise BadSampleError(UNDECODABLE_FEATURES, f'{where}: non-finite feature values')
        results['image_features'] = features.astype(np.float32)
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(dims={self.dims})'

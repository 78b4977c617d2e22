"""configs/methods.yml, the one method table: its configs exist, its capabilities are the
algorithms' own, and tools/compare.py, tools/benchmark_train.py and the visualizations read it
(their method lists are today's, in today's order)."""
import ast
import importlib.util
import os.path as osp

import pytest
import yaml

from rils_mm.tools.cli import UsageError
from rils_mm.utils.methods import MethodTableError, load_method_table

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
BENCHMARK = osp.join(REPO, 'tools', 'benchmark_train.py')

# The tools' lists before the table (rils_mm/tools/compare.py and tools/benchmark_train.py).
_LIT_IMAGE = dict(method='RILS', option='model.backbone.init_cfg.checkpoint')
_LIT_TEXT = dict(method='CLIP', option='model.text_encoder.init_cfg.checkpoint')
COMPARE = {
    'CLIP': dict(config='configs/clip/demo_cpu.py'),
    'MAE': dict(config='configs/mae/demo_cpu.py'),
    'MAE+CLIP': dict(config='configs/mae_clip/demo_cpu.py'),
    'RILS, vision space': dict(config='configs/rils/demo_cpu_vision-space.py'),
    'RILS': dict(config='configs/rils/demo_cpu.py'),
    'RILS, FLIP': dict(config='configs/rils/demo_cpu_flip.py'),
    'MIM->CLIP': dict(chain='configs/two_stage/mim_to_clip_demo.py'),
    'CLIP->MIM': dict(chain='configs/two_stage/clip_to_mim_demo.py'),
    'MILAN': dict(config='configs/milan/demo_cpu.py',
                  sources=[dict(method='CLIP', option='model.target_generator.checkpoint')]),
    'MIM->LiT': dict(chain='configs/two_stage/mim_to_lit_demo.py'),
    'MaMMUT': dict(config='configs/mammut/demo_cpu.py'),
    'LiT LU': dict(config='configs/lit/demo_cpu_L-U.py', sources=[_LIT_IMAGE, _LIT_TEXT]),
    'LiT Lu': dict(config='configs/lit/demo_cpu_L-scratch.py', sources=[_LIT_IMAGE]),
    'LiT UU': dict(config='configs/lit/demo_cpu_U-U.py', sources=[_LIT_IMAGE, _LIT_TEXT]),
    'LiT Uu': dict(config='configs/lit/demo_cpu_U-scratch.py', sources=[_LIT_IMAGE]),
    'LiT uu': dict(config='configs/lit/demo_cpu_scratch-scratch.py', sources=[]),
    'LiT UL': dict(config='configs/lit/demo_cpu_U-L.py', sources=[_LIT_IMAGE, _LIT_TEXT]),
}
BENCHMARK_METHODS = {
    'open_clip': None,
    'clip': 'clip/pretrain_b16.py',
    'rils': 'rils/pretrain_b16.py',
    'rils_flip': 'rils/pretrain_b16_flip.py',
    'mae': 'mae/pretrain_b16.py',
    'mae_clip': 'mae_clip/pretrain_b16.py',
    'milan': 'milan/pretrain_b16_laion.py',
    'lit': 'lit/lit_b16_L-U.py',
    'lit_cached': 'lit/lit_b16_L-U_cached.py',
    'mammut': 'mammut/pretrain_b16.py',
}


def load_benchmark():
    spec = importlib.util.spec_from_file_location('benchmark_train', BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tools_read_the_table_and_list_todays_methods(monkeypatch, tmp_path):
    from rils_mm.tools import compare
    assert list(compare.METHODS.items()) == list(COMPARE.items())  # same order too
    benchmark = load_benchmark()
    assert list(benchmark.METHODS.items()) == list(BENCHMARK_METHODS.items())
    assert benchmark.OPTIONAL == {'rils_flip'} and benchmark.FEATURE_INPUTS == {'lit_cached'}
    # No config of the table is written in the tools' code (their docs may name them) ...
    for path in (compare.__file__, BENCHMARK):
        with open(path) as f:
            source = f.read()
        source = source.replace(ast.get_docstring(ast.parse(source), clean=False), '')
        assert not [c for c in BENCHMARK_METHODS.values() if c and c in source], path
        assert 'demo_cpu' not in source and 'two_stage' not in source, path
    # ... and the comparison follows an edited table: order, runs and sources.
    with open(osp.join(REPO, 'configs', 'methods.yml')) as f:
        data = yaml.safe_load(f)
    runs = {run['Name']: run for run in data['Compare']}
    data['Compare'] = [runs[name] for name in ('LiT UL', 'RILS', 'CLIP')]
    edited = tmp_path / 'configs' / 'methods.yml'
    edited.parent.mkdir()
    edited.write_text(yaml.safe_dump(data))
    monkeypatch.setattr('rils_mm.utils.methods.METHOD_TABLE', str(edited))
    assert list(compare.methods_from_table()) == ['LiT UL', 'RILS', 'CLIP']
    # A malformed table is the tools' one-line usage error.
    edited.write_text('Methods: [{Name: X, Algorithms: [X]}]\nCompare: [{Name: x, Method: Y}]')
    with pytest.raises(UsageError, match=r"methods.yml: Compare run 'x': Method 'Y' is not in"):
        compare.methods_from_table()


def test_every_config_exists_and_capabilities_are_the_algorithms_own():
    """Each config the table names exists and builds a model of one of its method's algorithm
    classes; the capabilities match what those classes have."""
    from mmengine.config import Config
    from mmpretrain.registry import MODELS

    import rils_mm  # noqa: F401 (registers the algorithms)
    table = load_method_table()
    assert {'CLIP', 'RILS', 'MAE', 'MAE+CLIP', 'MILAN', 'LiT', 'MaMMUT'} <= set(table.methods)
    configs = {}  # path -> the method whose algorithm it must build
    for method in table.methods.values():
        configs.update({path: method for path in (method.config, method.demo) if path})
    configs.update({run.config: run.method for run in table.compare if run.config})
    configs.update({run.config: run.method for run in table.benchmark if run.config})
    for path, method in configs.items():
        assert osp.isfile(osp.join(REPO, path)), path
        # Its custom_imports too: a method's module may be imported by its configs only.
        model = Config.fromfile(osp.join(REPO, path)).model
        assert model.type in method.algorithms, (path, model.type, method.name)
    for run in table.compare:
        if run.chain:
            assert osp.isfile(osp.join(REPO, run.chain)), run.chain
    for method in table.methods.values():
        for name in method.algorithms:
            cls = MODELS.get(name)
            assert cls is not None and table.method_of(cls) is method, name
            assert hasattr(cls, 'encode_text') == method.text_tower, name
            assert hasattr(cls, 'generate') == method.captioning, name
    # A subclass without an entry of its own is its parent's method; other models have none.
    assert table.method_of(type('ToyRILS', (MODELS.get('RILS'), ), {})).name == 'RILS'
    assert table.method_of(MODELS.get('OpenCLIPModel')) is None


@pytest.mark.parametrize('text,message', [
    ('Methods: [{Name: X, Algorithms: [X], Masking: random}]',
     "method 'X': Masking must be one of none, uniform, teacher-attention, got 'random'"),
    ('Methods: [{Name: X, Algorithms: [X], Text: true}]', "Methods[0]: unknown key 'Text'"),
    ('Methods: [{Name: X, Algorithms: [X]}]\nBenchmark: [{Name: x, Method: Y}]',
     "Benchmark run 'x': Method 'Y' is not in Methods (X)"),
    ('Methods: [{Name: X, Algorithms: [X]}]\nCompare: [{Name: x, Method: X}]',
     "Compare run 'x': give either a Config (default: the method's Demo) or a Chain"),
    ('Methods: [{Name: X, Algorithms: [X], Demo: a.py}]\n'
     'Compare: [{Name: x, Method: X, Sources: [{Method: y, Option: k}]}]',
     "Compare run 'x': source 'y' is not a Compare run"),
    ('Methods: [{Name: X', 'not valid YAML'),
])
def test_a_malformed_table_is_one_line_naming_the_entry(tmp_path, text, message):
    path = tmp_path / 'methods.yml'
    path.write_text(text)
    with pytest.raises(MethodTableError) as error:
        load_method_table(str(path))
    assert message in str(error.value) and str(error.value).startswith(str(path))
    assert '\n' not in str(error.value)


def test_visualizations_draw_what_the_table_says(monkeypatch, tmp_path):
    """masks.py's kind of drawing and the patch maps' RILS student come from the model's
    method in the table (a subclass without an entry: its parent's)."""
    from mmpretrain.registry import MODELS

    import rils_mm  # noqa: F401 (registers the algorithms)
    from rils_mm.visualization import VisualizationInputError, is_rils, reconstruction_kind

    def model(name, subclass=False):  # an instance without weights: only its class is read
        cls = MODELS.get(name)
        cls = type(f'Toy{name}', (cls, ), {}) if subclass else cls
        return cls.__new__(cls)

    expected = dict(RILS='rils', MAE='pixel', MAECLIP='pixel', MILAN='milan',
                    PixelTargetMILAN='milan_pixel')
    for name, kind in expected.items():
        assert reconstruction_kind(model(name)) == reconstruction_kind(model(name, True)) == kind
    assert is_rils(model('RILS', True)) and not is_rils(model('MAECLIP'))
    with pytest.raises(VisualizationInputError, match=r'^LiT draws no masks \(masking '
                       r'methods: RILS, MAE, MAE\+CLIP, MILAN, MILAN \(pixel target\)\)$'):
        reconstruction_kind(model('LiT'))
    # An edited table: MAE without masks, RILS reconstructing features under uniform masks.
    with open(osp.join(REPO, 'configs', 'methods.yml')) as f:
        data = yaml.safe_load(f)
    methods = {method['Name']: method for method in data['Methods']}
    methods['MAE']['Masking'] = 'none'
    methods['RILS']['Reconstruction'] = 'feature'
    edited = tmp_path / 'methods.yml'
    edited.write_text(yaml.safe_dump(data))
    monkeypatch.setattr('rils_mm.utils.methods.METHOD_TABLE', str(edited))
    with pytest.raises(VisualizationInputError, match='^MAE draws no masks'):
        reconstruction_kind(model('MAE'))
    with pytest.raises(VisualizationInputError, match=r'^RILS \(RILS\): no loss map for '
                       r'uniform masks with feature reconstruction \(drawn: uniform \+ '
                       r'language, uniform \+ pixel, teacher-attention \+ feature, '
                       r'teacher-attention \+ pixel\)$'):
        reconstruction_kind(model('RILS'))
    assert not is_rils(model('RILS'))
    edited.write_text('Methods: [{Name: X, Algorithms: [X], Masking: random}]')
    with pytest.raises(VisualizationInputError, match=r"methods.yml: method 'X': Masking"):
        reconstruction_kind(model('RILS'))

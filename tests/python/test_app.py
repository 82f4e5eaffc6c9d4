"""app.py is a valid Modal app for the installed `modal` client (imported, never deployed)."""

import importlib.util
import pathlib
import unittest

import modal

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load_app_module():
    spec = importlib.util.spec_from_file_location("mgr_app", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class AppFileTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.module = load_app_module()

    def test_it_defines_a_modal_app_with_the_webhook_function(self):
        self.assertIsInstance(self.module.app, modal.App)
        self.assertEqual(self.module.app.name, "modal-github-runner-service")
        # Decorating turned the function into a Modal Function bound to the app.
        self.assertIsInstance(self.module.webhook, modal.Function)

    def test_the_webhook_serves_the_service_port(self):
        self.assertEqual(self.module.PORT, 8000)
        self.assertEqual(self.module.service_environment({})["PORT"], "8000")

    def test_the_image_is_a_modal_image_built_from_the_sources(self):
        self.assertIsInstance(self.module.image, modal.Image)
        self.assertIn("target", self.module.IGNORE)

    def test_the_original_secret_name_is_used(self):
        self.assertEqual(self.module.SECRET_NAMES[0], "github-secret")

    def test_the_service_environment_maps_the_modal_token_and_drops_the_container_url(self):
        env = self.module.service_environment(
            {
                "GHA_MODAL_TOKEN_ID": "ak-1",
                "GHA_MODAL_TOKEN_SECRET": "as-1",
                "MODAL_SERVER_URL": "unix:///container",
                "GITHUB_TOKEN": "t",
            }
        )
        self.assertEqual(env["MODAL_TOKEN_ID"], "ak-1")
        self.assertEqual(env["MODAL_TOKEN_SECRET"], "as-1")
        self.assertNotIn("MODAL_SERVER_URL", env)
        self.assertEqual(env["BACKEND"], "modal")
        self.assertEqual(env["PORT"], "8000")
        self.assertEqual(env["GITHUB_TOKEN"], "t")

    def test_an_explicit_server_url_override_is_kept(self):
        env = self.module.service_environment({"MGR_MODAL_SERVER_URL": "https://api.modal.com:443"})
        self.assertEqual(env["MODAL_SERVER_URL"], "https://api.modal.com:443")


if __name__ == "__main__":
    unittest.main()

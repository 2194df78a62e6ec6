using Microsoft.Playwright;

namespace Treaty.Dashboard.Tests.Support;

/// <summary>
/// Playwright driving Debian's chromium (never a downloaded browser): one browser per test class,
/// a fresh context (its own sessionStorage) per page. Disposing closes the browser and stops the
/// Playwright driver, so no process outlives the tests.
/// </summary>
public sealed class BrowserSession : IAsyncDisposable
{
    /// <summary>Where the browser is; <c>TREATY_CHROMIUM</c> overrides.</summary>
    public static string ChromiumPath => Environment.GetEnvironmentVariable("TREATY_CHROMIUM") is { Length: > 0 } path ? path : "/usr/bin/chromium";

    private readonly IPlaywright _playwright;

    private BrowserSession(IPlaywright playwright, IBrowser browser)
    {
        _playwright = playwright;
        Browser = browser;
    }

    public IBrowser Browser { get; }

    public static async Task<BrowserSession> StartAsync()
    {
        if (!File.Exists(ChromiumPath))
        {
            // Never skipped silently: test.sh installs Debian's chromium when it is missing.
            throw new InvalidOperationException($"No browser at {ChromiumPath}. Run ./test.sh (it installs Debian's chromium) or apt-get install chromium.");
        }

        var playwright = await Playwright.CreateAsync();
        try
        {
            var browser = await playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions
            {
                ExecutablePath = ChromiumPath,
                Headless = true,
                // Root in a container has no user namespace for the sandbox; /dev/shm is small there.
                Args = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
                Timeout = 60_000,
            });
            return new BrowserSession(playwright, browser);
        }
        catch
        {
            playwright.Dispose();
            throw;
        }
    }

    /// <summary>A page in a context of its own, sized for screenshots, failing fast on script errors.</summary>
    public async Task<(IBrowserContext Context, IPage Page, List<string> Errors)> NewPageAsync(Uri baseAddress)
    {
        var context = await Browser.NewContextAsync(new BrowserNewContextOptions
        {
            BaseURL = baseAddress.AbsoluteUri,
            ViewportSize = new ViewportSize { Width = 1400, Height = 900 },
        });
        context.SetDefaultTimeout(20_000);
        var page = await context.NewPageAsync();
        var errors = new List<string>();
        page.PageError += (_, error) => errors.Add(error);
        page.Console += (_, message) =>
        {
            // A CSP violation is reported on the console: the page must never cause one.
            if (message.Type == "error" && message.Text.Contains("Content Security Policy", StringComparison.OrdinalIgnoreCase))
            {
                errors.Add(message.Text);
            }
        };
        return (context, page, errors);
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            await Browser.CloseAsync();
        }
        finally
        {
            _playwright.Dispose();
        }
    }

    /// <summary>Saves a screenshot when <c>TREATY_DASHBOARD_SCREENSHOTS</c> names a directory (docs/ regenerates them).</summary>
    public static async Task ScreenshotAsync(IPage page, string name)
    {
        if (Environment.GetEnvironmentVariable("TREATY_DASHBOARD_SCREENSHOTS") is { Length: > 0 } directory)
        {
            Directory.CreateDirectory(directory);
            await page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(directory, name), FullPage = true });
        }
    }
}

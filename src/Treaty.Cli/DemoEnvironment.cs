using System.Net.Http.Json;
using System.Text.Json.Nodes;

namespace Treaty.Cli;

/// <summary>
/// The coordinator and the three Shop services, each a real child process with its own database
/// directory and loopback port. The coordinator can be killed (SIGKILL) and restarted on the same
/// data directory.
/// </summary>
internal sealed class DemoEnvironment : IAsyncDisposable
{
    private readonly List<ChildProcess> _shops = [];
    private readonly bool _deleteRoot;
    private ChildProcess? _coordinator;

    private DemoEnvironment(string root, bool deleteRoot)
    {
        Root = root;
        _deleteRoot = deleteRoot;
        CoordinatorUrl = $"http://127.0.0.1:{ChildProcess.FreePort()}";
        OrderUrl = $"http://127.0.0.1:{ChildProcess.FreePort()}";
        PaymentUrl = $"http://127.0.0.1:{ChildProcess.FreePort()}";
        InventoryUrl = $"http://127.0.0.1:{ChildProcess.FreePort()}";
        Http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
    }

    public string Root { get; }

    public string CoordinatorUrl { get; }

    public string OrderUrl { get; }

    public string PaymentUrl { get; }

    public string InventoryUrl { get; }

    public HttpClient Http { get; }

    public int? CoordinatorPid => _coordinator?.Id;

    public IEnumerable<ChildProcess> Processes => _coordinator is null ? _shops : [_coordinator, .. _shops];

    public static async Task<DemoEnvironment> StartAsync(string? dataDir, CancellationToken cancellationToken)
    {
        var root = dataDir ?? Path.Combine(Path.GetTempPath(), "treaty-demo-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(root);
        var environment = new DemoEnvironment(root, deleteRoot: dataDir is null);
        try
        {
            var shopDll = Path.Combine(AppContext.BaseDirectory, "Shop.dll");
            if (!File.Exists(shopDll))
            {
                throw new FileNotFoundException("The Shop sample was not built next to the CLI.", shopDll);
            }

            foreach (var (service, url) in new[] { ("payment", environment.PaymentUrl), ("inventory", environment.InventoryUrl), ("order", environment.OrderUrl) })
            {
                environment._shops.Add(ChildProcess.StartDotnet(service, shopDll,
                [
                    "--service", service, "--urls", url, "--data-dir", Path.Combine(root, service),
                    "--coordinator", environment.CoordinatorUrl, "--payment", environment.PaymentUrl,
                    "--inventory", environment.InventoryUrl, "--faults",
                ]));
            }

            await environment.StartCoordinatorAsync(cancellationToken);
            foreach (var (shop, url) in environment._shops.Zip([environment.PaymentUrl, environment.InventoryUrl, environment.OrderUrl]))
            {
                await shop.WaitHealthyAsync(environment.Http, url + "/healthz", TimeSpan.FromSeconds(60), cancellationToken);
            }

            return environment;
        }
        catch
        {
            await environment.DisposeAsync();
            throw;
        }
    }

    public async Task StartCoordinatorAsync(CancellationToken cancellationToken)
    {
        _coordinator?.Dispose();
        _coordinator = ChildProcess.StartSelf("coordinator", ["serve", "--urls", CoordinatorUrl, "--data-dir", Path.Combine(Root, "coordinator")]);
        await _coordinator.WaitHealthyAsync(Http, CoordinatorUrl + "/healthz", TimeSpan.FromSeconds(60), cancellationToken);
    }

    /// <summary>SIGKILL the coordinator: no graceful shutdown, whatever was in flight stays in flight.</summary>
    public void KillCoordinator() => _coordinator?.Kill();

    public async Task<JsonNode> GetJsonAsync(string url, CancellationToken cancellationToken)
    {
        using var response = await Http.GetAsync(url, cancellationToken);
        var text = await response.Content.ReadAsStringAsync(cancellationToken);
        if (!response.IsSuccessStatusCode)
        {
            throw new InvalidOperationException($"GET {url} answered {(int)response.StatusCode}: {text}");
        }

        return JsonNode.Parse(text) ?? throw new InvalidOperationException($"GET {url} answered no JSON");
    }

    public async Task SetFaultAsync(string serviceUrl, string path, int failTimes, int status, int delayMs, CancellationToken cancellationToken)
    {
        using var response = await Http.PostAsJsonAsync(serviceUrl + "/_faults",
            new JsonObject { ["path"] = path, ["failTimes"] = failTimes, ["status"] = status, ["delayMs"] = delayMs }, cancellationToken);
        response.EnsureSuccessStatusCode();
    }

    public async Task ClearFaultsAsync(CancellationToken cancellationToken)
    {
        foreach (var url in new[] { OrderUrl, PaymentUrl, InventoryUrl })
        {
            using var response = await Http.DeleteAsync(url + "/_faults", cancellationToken);
            response.EnsureSuccessStatusCode();
        }
    }

    public async ValueTask DisposeAsync()
    {
        // Stop every process we started, by pid, even when the demo failed.
        _coordinator?.Dispose();
        foreach (var shop in _shops)
        {
            shop.Dispose();
        }

        Http.Dispose();
        if (_deleteRoot)
        {
            try
            {
                Directory.Delete(Root, recursive: true);
            }
            catch (IOException)
            {
                // best effort: a temp dir
            }
        }

        await Task.CompletedTask;
    }
}

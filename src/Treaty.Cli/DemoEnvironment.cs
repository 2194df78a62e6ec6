using System.Net.Http.Json;
using System.Text.Json.Nodes;

namespace Treaty.Cli;

/// <summary>
/// The coordinator and the three Shop services, each a real child process with its own database
/// directory and loopback port. The coordinator and each Shop service can be killed (SIGKILL) and restarted on the same
/// data directory. Every branch call is signed: one secret, generated per run, is given to the
/// coordinator and to the three services (through <c>TREATY_CALLBACK_SECRET</c>, the environment
/// form of <c>--callback-secret</c>, so it never shows in the process list), and the services
/// answer 401 to a branch call whose <c>Treaty-Signature</c> does not verify.
/// </summary>
internal sealed class DemoEnvironment : IAsyncDisposable
{
    private readonly List<ChildProcess> _shops = [];
    private readonly bool _deleteRoot;
    private ChildProcess? _coordinator;

    private DemoEnvironment(string root, bool deleteRoot, string? coordinatorUrl)
    {
        Root = root;
        _deleteRoot = deleteRoot;
        ExternalCoordinator = coordinatorUrl is not null;
        CoordinatorUrl = coordinatorUrl ?? $"http://127.0.0.1:{ChildProcess.FreePort()}";
        OrderUrl = $"http://127.0.0.1:{ChildProcess.FreePort()}";
        PaymentUrl = $"http://127.0.0.1:{ChildProcess.FreePort()}";
        InventoryUrl = $"http://127.0.0.1:{ChildProcess.FreePort()}";
        Http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
        CallbackSecret = Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(24));
    }

    /// <summary>The environment variable both <c>treaty serve</c> and the Shop read as their callback secret.</summary>
    public const string CallbackSecretVariable = ServeCommand.CallbackSecretVariable;

    /// <summary>The secret the coordinator signs branch calls with and the services verify.</summary>
    public string CallbackSecret { get; }

    public string Root { get; }

    public string CoordinatorUrl { get; }

    /// <summary>True when the coordinator is someone else's (several instances behind one URL, in
    /// tests): this environment starts only the Shop services.</summary>
    public bool ExternalCoordinator { get; }

    public string OrderUrl { get; }

    public string PaymentUrl { get; }

    public string InventoryUrl { get; }

    public HttpClient Http { get; }

    public int? CoordinatorPid => _coordinator?.Id;

    public IEnumerable<ChildProcess> Processes => _coordinator is null ? _shops : [_coordinator, .. _shops];

    /// <summary>
    /// The demo's <c>--in-doubt-after</c> for the services: short, so that the 3PC experiment's
    /// participants decide alone within seconds of losing their coordinator. Longer than the
    /// coordinator takes to restart in the scenarios that kill it while no 3PC is in flight. The
    /// chaos test chooses its own per protocol (ChaosTests' ProtocolCase).
    /// </summary>
    public static readonly TimeSpan DemoInDoubtAfter = TimeSpan.FromSeconds(3);

    /// <summary>How long a Shop service waits for an outcome before it asks the coordinator (<c>--in-doubt-after</c>); null for its default.</summary>
    public TimeSpan? InDoubtAfter { get; private init; }

    /// <summary>More arguments for every Shop service (e.g. <c>--transport rabbitmq --rabbitmq URL</c>).</summary>
    public IReadOnlyList<string> ShopArguments { get; private init; } = [];

    /// <summary>Starts the three Shop services and, unless <paramref name="coordinatorUrl"/> names one
    /// running elsewhere, a coordinator; waits until every process is healthy.</summary>
    /// <param name="dataDir">Where the processes keep their data; null: a temp directory deleted on dispose.</param>
    /// <param name="cancellationToken">Stops the wait.</param>
    /// <param name="inDoubtAfter">The services' <c>--in-doubt-after</c>; null for their default.</param>
    /// <param name="shopArguments">More arguments for every Shop service.</param>
    /// <param name="coordinatorUrl">A coordinator already running elsewhere (then none is started here).</param>
    public static async Task<DemoEnvironment> StartAsync(
        string? dataDir,
        CancellationToken cancellationToken,
        TimeSpan? inDoubtAfter = null,
        IReadOnlyList<string>? shopArguments = null,
        string? coordinatorUrl = null)
    {
        var root = dataDir ?? Path.Combine(Path.GetTempPath(), "treaty-demo-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(root);
        var environment = new DemoEnvironment(root, deleteRoot: dataDir is null, coordinatorUrl) { InDoubtAfter = inDoubtAfter, ShopArguments = shopArguments ?? [] };
        try
        {
            var shopDll = Path.Combine(AppContext.BaseDirectory, "Shop.dll");
            if (!File.Exists(shopDll))
            {
                throw new FileNotFoundException("The Shop sample was not built next to the CLI.", shopDll);
            }

            foreach (var service in new[] { "payment", "inventory", "order" })
            {
                environment._shops.Add(environment.StartShop(service));
            }

            if (!environment.ExternalCoordinator)
            {
                await environment.StartCoordinatorAsync(cancellationToken);
            }

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
        _coordinator = ChildProcess.StartDotnet("coordinator", typeof(ChildProcess).Assembly.Location,
            ["serve", "--urls", CoordinatorUrl, "--data-dir", Path.Combine(Root, "coordinator"),
             // The dashboard's dead-letter view shows the three services' dead letters (each maps MapTreatyDeadLetters).
             "--dead-letter-source", "order=" + OrderUrl, "--dead-letter-source", "payment=" + PaymentUrl, "--dead-letter-source", "inventory=" + InventoryUrl],
            new Dictionary<string, string> { [CallbackSecretVariable] = CallbackSecret });
        await _coordinator.WaitHealthyAsync(Http, CoordinatorUrl + "/healthz", TimeSpan.FromSeconds(60), cancellationToken);
    }

    /// <summary>The Order service's process.</summary>
    public ChildProcess Order => Shop("order");

    /// <summary>The process of the Shop service <paramref name="service"/> (order, payment or inventory).</summary>
    public ChildProcess Shop(string service) => _shops.First(s => s.Name == service);

    /// <summary>The base URL of the Shop service <paramref name="service"/>.</summary>
    public string ShopUrl(string service) => service switch
    {
        "order" => OrderUrl,
        "payment" => PaymentUrl,
        "inventory" => InventoryUrl,
        _ => throw new ArgumentOutOfRangeException(nameof(service), service, "order, payment or inventory"),
    };

    /// <summary>Starts the Order service again on the same data directory and port (after it died); waits until it is healthy.</summary>
    public Task RestartOrderAsync(CancellationToken cancellationToken) => RestartShopAsync("order", cancellationToken);

    /// <summary>
    /// Starts the Shop service <paramref name="service"/> again on the same data directory and port
    /// (SIGKILLing it by pid first if it still runs); waits until it is healthy.
    /// </summary>
    public async Task RestartShopAsync(string service, CancellationToken cancellationToken)
    {
        var old = Shop(service);
        old.Dispose(); // SIGKILL by pid if it still runs
        _shops.Remove(old);
        var restarted = StartShop(service);
        _shops.Add(restarted);
        await restarted.WaitHealthyAsync(Http, ShopUrl(service) + "/healthz", TimeSpan.FromSeconds(60), cancellationToken);
    }

    private ChildProcess StartShop(string service)
    {
        var shopDll = Path.Combine(AppContext.BaseDirectory, "Shop.dll");
        var url = ShopUrl(service);
        List<string> args =
        [
            "--service", service, "--urls", url, "--data-dir", Path.Combine(Root, service),
            "--coordinator", CoordinatorUrl, "--payment", PaymentUrl,
            "--inventory", InventoryUrl, "--order", OrderUrl, "--faults",
        ];
        if (InDoubtAfter is { } after)
        {
            args.AddRange(["--in-doubt-after", after.TotalSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        }

        args.AddRange(ShopArguments);

        return ChildProcess.StartDotnet(service, shopDll, args,
            new Dictionary<string, string> { [CallbackSecretVariable] = CallbackSecret });
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

    public async Task SetFaultAsync(string serviceUrl, string path, int failTimes, int status, int delayMs, CancellationToken cancellationToken, bool killAfterCommit = false)
    {
        var rule = new JsonObject { ["path"] = path, ["failTimes"] = failTimes, ["status"] = status, ["delayMs"] = delayMs };
        if (killAfterCommit)
        {
            rule["killAfterCommit"] = true;
        }

        using var response = await Http.PostAsJsonAsync(serviceUrl + "/_faults", rule, cancellationToken);
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

using System.Collections.Concurrent;
using System.Net.Http.Headers;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Treaty.Server.Tests.Security;

/// <summary>
/// A coordinator built by <see cref="TreatyServer.CreateApp"/> on loopback with the security settings
/// a test chooses, every log line captured, and the chance to map extra endpoints before it starts.
/// </summary>
public sealed class SecureServer : IAsyncDisposable
{
    public const string ClientSecret = "client-secret-0123456789";
    public const string OperatorSecret = "operator-secret-0123456789";
    public const string NewOperatorSecret = "operator-secret-rotated-42";

    private readonly WebApplication _app;
    private readonly TempDir _dataDir;
    private readonly List<HttpClient> _clients = [];

    private SecureServer(WebApplication app, TempDir dataDir, LogCapture logs)
    {
        _app = app;
        _dataDir = dataDir;
        Logs = logs;
    }

    public Uri BaseAddress { get; private set; } = null!;

    public IServiceProvider Services => _app.Services;

    public LogCapture Logs { get; }

    /// <summary>Keys <c>app:ClientSecret</c> (client) and <c>ops:OperatorSecret</c> plus a bare <see cref="NewOperatorSecret"/> (operators).</summary>
    public static void WithKeys(TreatyServerOptions options)
    {
        options.ApiKeys.Add("app:" + ClientSecret);
        options.OperatorKeys.Add("ops:" + OperatorSecret);
        options.OperatorKeys.Add(NewOperatorSecret);
    }

    public static async Task<SecureServer> StartAsync(
        Action<TreatyServerOptions>? configure = null,
        Action<WebApplication>? map = null,
        Action<WebApplicationBuilder>? build = null)
    {
        var dataDir = new TempDir("treaty-sec");
        var options = new TreatyServerOptions
        {
            Urls = "http://127.0.0.1:0",
            DataDir = dataDir.Path,
            RecoveryInterval = TimeSpan.FromMilliseconds(250),
        };
        configure?.Invoke(options);
        var logs = new LogCapture();
        WebApplication app;
        try
        {
            app = TreatyServer.CreateApp(options, b =>
            {
                b.Logging.ClearProviders();
                b.Logging.SetMinimumLevel(LogLevel.Debug);
                b.Logging.AddFilter("Microsoft", LogLevel.Warning);
                b.Logging.AddProvider(logs);
                build?.Invoke(b);
            });
        }
        catch
        {
            dataDir.Dispose();
            throw;
        }

        map?.Invoke(app);
        var server = new SecureServer(app, dataDir, logs);
        try
        {
            await app.StartAsync();
            server.BaseAddress = new Uri(app.Urls.Single());
            return server;
        }
        catch
        {
            await server.DisposeAsync();
            throw;
        }
    }

    /// <summary>Raw HTTP to the server, sending <c>Authorization: Bearer <paramref name="key"/></c> when given.</summary>
    public HttpClient Http(string? key = null)
    {
        var http = new HttpClient { BaseAddress = BaseAddress, Timeout = TimeSpan.FromSeconds(30) };
        if (key is not null)
        {
            http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key);
        }

        _clients.Add(http);
        return http;
    }

    public T Get<T>()
        where T : notnull => _app.Services.GetRequiredService<T>();

    public async ValueTask DisposeAsync()
    {
        foreach (var client in _clients)
        {
            client.Dispose();
        }

        try
        {
            using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(10));
            await _app.StopAsync(stop.Token);
        }
        finally
        {
            await _app.DisposeAsync();
            _dataDir.Dispose();
        }
    }
}

/// <summary>Every log line, formatted, with its event id.</summary>
public sealed class LogCapture : ILoggerProvider
{
    private readonly ConcurrentQueue<(EventId Id, LogLevel Level, string Message)> _lines = new();

    public IReadOnlyCollection<(EventId Id, LogLevel Level, string Message)> Lines => _lines;

    public ILogger CreateLogger(string categoryName) => new Logger(this);

    public void Dispose()
    {
    }

    private sealed class Logger(LogCapture owner) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            owner._lines.Enqueue((eventId, logLevel, formatter(state, exception) + (exception is null ? "" : " " + exception)));
    }
}

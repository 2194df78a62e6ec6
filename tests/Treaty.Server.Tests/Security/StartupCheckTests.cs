using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Treaty.Server.Security;

namespace Treaty.Server.Tests.Security;

/// <summary>A keyless coordinator that Kestrel bound beyond loopback anyway (configured around
/// <c>--urls</c>) stops as soon as it has started.</summary>
public sealed class StartupCheckTests
{
    [Theory]
    [InlineData("http://0.0.0.0:5080", true)]
    [InlineData("http://[::]:5080", true)]
    [InlineData("http://192.168.1.5:5080", true)]
    [InlineData("http://127.0.0.1:5080", false)]
    [InlineData("http://[::1]:5080", false)]
    public async Task Keyless_ListeningBeyondLoopback_StopsTheApplication(string address, bool stops)
    {
        var options = new TreatyServerOptions();
        var lifetime = new FakeLifetime();
        var logs = new LogCapture();
        var check = new TreatyAuthorization.SecurityStartupCheck(ApiKeyRing.From(options), ParticipantAllowlist.From(options), options,
            new FakeServer(address), lifetime, new Logger(logs.CreateLogger("check")));

        await check.StartAsync(CancellationToken.None);
        lifetime.Start();

        lifetime.StopRequested.ShouldBe(stops);
        logs.Lines.Any(line => line.Id.Id == 3014 && line.Message.Contains(address)).ShouldBe(stops);
    }

    [Fact]
    public async Task WithKeys_ListeningBeyondLoopback_Runs()
    {
        var options = new TreatyServerOptions();
        SecureServer.WithKeys(options);
        var lifetime = new FakeLifetime();
        var logs = new LogCapture();
        var check = new TreatyAuthorization.SecurityStartupCheck(ApiKeyRing.From(options), ParticipantAllowlist.From(options), options,
            new FakeServer("http://0.0.0.0:5080"), lifetime, new Logger(logs.CreateLogger("check")));

        await check.StartAsync(CancellationToken.None);
        lifetime.Start();

        lifetime.StopRequested.ShouldBeFalse();
    }

    private sealed class Logger(ILogger inner) : ILogger<TreatyAuthorization.SecurityStartupCheck>
    {
        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => inner.BeginScope(state);

        public bool IsEnabled(LogLevel logLevel) => inner.IsEnabled(logLevel);

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            inner.Log(logLevel, eventId, state, exception, formatter);
    }

    private sealed class FakeServer : IServer
    {
        public FakeServer(string address)
        {
            var addresses = new ServerAddressesFeature();
            addresses.Addresses.Add(address);
            Features.Set<IServerAddressesFeature>(addresses);
        }

        public IFeatureCollection Features { get; } = new FeatureCollection();

        public Task StartAsync<TContext>(IHttpApplication<TContext> application, CancellationToken cancellationToken)
            where TContext : notnull => Task.CompletedTask;

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public void Dispose()
        {
        }
    }

    private sealed class FakeLifetime : IHostApplicationLifetime
    {
        private readonly CancellationTokenSource _started = new();

        public CancellationToken ApplicationStarted => _started.Token;

        public CancellationToken ApplicationStopping => CancellationToken.None;

        public CancellationToken ApplicationStopped => CancellationToken.None;

        public bool StopRequested { get; private set; }

        public void Start() => _started.Cancel();

        public void StopApplication() => StopRequested = true;
    }
}

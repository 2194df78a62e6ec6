using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Treaty.Messaging.Embedded;
using Treaty.Messaging.Transport;

namespace Treaty.Messaging.Tests;

/// <summary>The compliance suite on the embedded transport: each subscribing service is a Kestrel host on its own loopback port.</summary>
public sealed class EmbeddedTransportComplianceTests : TransportComplianceTests
{
    // One port per service for the whole test, so a service that "restarts" comes back where its senders route to.
    private readonly Dictionary<string, int> _ports = [];
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(10) };

    protected override async Task<IMessageTransport> CreateTransportAsync(string service, IReadOnlyList<Subscription> topology)
    {
        var routes = new EmbeddedRoutes();
        foreach (var subscription in topology)
        {
            foreach (var type in subscription.Types)
            {
                routes.Route(type, new Uri($"http://127.0.0.1:{Port(subscription.Subscriber)}/"));
            }
        }

        var dispatcher = new EmbeddedDispatcher();
        var transport = new EmbeddedTransport(_http, routes, dispatcher);
        if (!topology.Any(subscription => subscription.Subscriber == service))
        {
            return transport;
        }

        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls($"http://127.0.0.1:{Port(service)}");
        builder.Logging.ClearProviders();
        builder.Services.AddSingleton(dispatcher);
        var app = builder.Build();
        app.MapTreatyMessaging();
        await app.StartAsync();
        return new HostedTransport(transport, app);
    }

    public override async Task DisposeAsync()
    {
        await base.DisposeAsync();
        _http.Dispose();
    }

    private int Port(string service)
    {
        if (!_ports.TryGetValue(service, out var port))
        {
            using var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            _ports[service] = port = ((IPEndPoint)listener.LocalEndpoint).Port;
        }

        return port;
    }

    /// <summary>The transport of a subscribing service together with its endpoint: disposing it takes the service down.</summary>
    private sealed class HostedTransport(IMessageTransport inner, WebApplication app) : IMessageTransport
    {
        public string Name => inner.Name;

        public Task SendAsync(IReadOnlyList<TransportMessage> messages, CancellationToken cancellationToken) => inner.SendAsync(messages, cancellationToken);

        public Task<IAsyncDisposable> SubscribeAsync(Subscription subscription, MessageHandler handler, CancellationToken cancellationToken) =>
            inner.SubscribeAsync(subscription, handler, cancellationToken);

        public async ValueTask DisposeAsync()
        {
            await inner.DisposeAsync();
            await app.StopAsync();
            await app.DisposeAsync();
        }
    }
}

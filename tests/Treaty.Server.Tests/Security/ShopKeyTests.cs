using System.Net;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Logging;
using Shop;
using Treaty.Server.Tests.Support;

namespace Treaty.Server.Tests.Security;

/// <summary>The Shop's Order service checks out through a coordinator that wants a key, with its
/// <c>--coordinator-key</c> (a client key): the saga runs and the order is confirmed.</summary>
public sealed class ShopKeyTests
{
    [Fact]
    public async Task Checkout_AgainstAKeyedCoordinator_WithTheShopsClientKey_IsConfirmed()
    {
        await using var coordinator = await SecureServer.StartAsync(SecureServer.WithKeys);
        using var dataDir = new TempDir("treaty-shop-keys");
        var coordinatorUrl = coordinator.BaseAddress.AbsoluteUri.TrimEnd('/');
        var key = "app:" + SecureServer.ClientSecret;

        await using var payment = await StartAsync(ShopService.Payment, "http://127.0.0.1:0", dataDir, coordinatorUrl, key);
        await using var inventory = await StartAsync(ShopService.Inventory, "http://127.0.0.1:0", dataDir, coordinatorUrl, key);
        var orderUrl = $"http://127.0.0.1:{FreePort()}";
        await using var order = await StartAsync(ShopService.Order, orderUrl, dataDir, coordinatorUrl, key, payment.Urls.Single(), inventory.Urls.Single());

        using var http = new HttpClient { BaseAddress = new Uri(orderUrl), Timeout = TimeSpan.FromSeconds(30) };
        using var checkout = new HttpRequestMessage(HttpMethod.Post, "/checkout")
        {
            Content = JsonContent.Create(new JsonObject
            {
                ["customerId"] = "alice",
                ["items"] = new JsonArray(new JsonObject { ["sku"] = "book", ["qty"] = 1 }),
                ["protocol"] = "saga",
            }),
        };
        checkout.Headers.Add("Idempotency-Key", "keyed-" + Guid.NewGuid().ToString("N"));
        using var accepted = await http.SendAsync(checkout);
        accepted.StatusCode.ShouldBe(HttpStatusCode.Accepted, await accepted.Content.ReadAsStringAsync());
        var orderId = (await accepted.Content.ReadFromJsonAsync<JsonObject>())!["orderId"]!.GetValue<string>();

        await Eventually.Async(
            async () => (await http.GetFromJsonAsync<JsonObject>($"/orders/{orderId}"))!["status"]!.GetValue<string>(),
            status => status == "CONFIRMED", $"order {orderId} confirmed");

        // The order is confirmed by the saga's last step; the coordinator records the commit when
        // that step's answer is back, a moment later.
        var operatorHttp = coordinator.Http("ops:" + SecureServer.OperatorSecret);
        var transactions = await Eventually.Async(
            () => Api.ListAsync(operatorHttp), page => page.Items.Any(t => t.Status == "committed"), "the checkout's saga committed");
        transactions.Items.ShouldContain(t => t.Status == "committed");
    }

    private static async Task<WebApplication> StartAsync(ShopService service, string urls, TempDir dataDir, string coordinator, string key, string? payment = null, string? inventory = null)
    {
        var app = ShopApp.Build(new ShopOptions
        {
            Service = service,
            Urls = urls,
            DataDir = Path.Combine(dataDir.Path, service.ToString()),
            CoordinatorUrl = coordinator,
            PaymentUrl = payment,
            InventoryUrl = inventory,
            CoordinatorKey = key,
            MinimumLogLevel = LogLevel.Warning,
        });
        await app.StartAsync();
        return app;
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}

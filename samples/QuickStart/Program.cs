// The README's C# example is the region between the quickstart markers, copied verbatim
// (QuickStartTests checks that the two are equal and runs this program).
// <quickstart>
using System.Text.Json;
using Treaty.Client;

// The coordinator and the Shop's Payment and Inventory services from the tour (or as arguments).
var coordinator = args.ElementAtOrDefault(0) ?? "http://127.0.0.1:5080";
var payment = args.ElementAtOrDefault(1) ?? "http://127.0.0.1:5102";
var inventory = args.ElementAtOrDefault(2) ?? "http://127.0.0.1:5103";

using var treaty = new TreatyClient(new Uri(coordinator));
var orderId = $"o-{Guid.NewGuid():N}"; // a new order, so a new gid: run it as often as you like
var payload = JsonSerializer.SerializeToElement(new
{
    orderId,
    customerId = "alice",
    amount = 25.00m,
    items = new[] { new { sku = "book", qty = 1 } },
});
var tx = await treaty.Saga($"order-{orderId}")
    .WithPayload(payload)
    .Step("payment", action: $"{payment}/saga/payment/reserve", compensate: $"{payment}/saga/payment/refund")
    .Step("inventory", action: $"{inventory}/saga/inventory/reserve", compensate: $"{inventory}/saga/inventory/release")
    .SubmitAsync(wait: TimeSpan.FromSeconds(5));
Console.WriteLine($"{tx.Gid}: {tx.Status}"); // committed; aborted (compensated) when a step said no
// </quickstart>
return tx.Status == "committed" ? 0 : 1;

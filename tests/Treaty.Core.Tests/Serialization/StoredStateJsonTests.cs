using System.Text.Json;
using Treaty.Core.Model;
using Treaty.Core.Protocols;
using Treaty.Core.Serialization;
using static Treaty.Core.Tests.Support.SagaSpecs;

namespace Treaty.Core.Tests.Serialization;

public sealed class StoredStateJsonTests
{
    [Theory]
    [InlineData("null")]
    [InlineData("""{"amount":25,"note":"a \"quoted\" <b>"}""")]
    [InlineData("[1,2,3]")]
    public void State_RoundTrips_WithThePayloadAsRawJson(string payload)
    {
        var spec = Sequential("order", "payment") with { PayloadJson = payload };
        var state = new SagaMachine().Create(spec, "fp", T0);

        var json = JsonSerializer.Serialize(state, TreatyJsonContext.Default.TransactionState);
        var back = JsonSerializer.Deserialize(json, TreatyJsonContext.Default.TransactionState)!;

        back.Spec.PayloadJson.ShouldBe(payload);
        JsonSerializer.Serialize(back, TreatyJsonContext.Default.TransactionState).ShouldBe(json);
        json.ShouldContain("\"payloadJson\":" + payload); // stored as JSON, not as an escaped string
    }
}

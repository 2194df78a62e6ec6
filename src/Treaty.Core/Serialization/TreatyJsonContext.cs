using System.Text.Json;
using System.Text.Json.Serialization;
using Treaty.Core.Contracts;
using Treaty.Core.Model;

namespace Treaty.Core.Serialization;

/// <summary>Source-generated JSON for the wire format and the stored state.</summary>
[JsonSourceGenerationOptions(
    JsonSerializerDefaults.Web,
    UseStringEnumConverter = true,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(TransactionState))]
[JsonSerializable(typeof(TransactionSpec))]
[JsonSerializable(typeof(JournalEntry))]
[JsonSerializable(typeof(JsonElement))]
[JsonSerializable(typeof(SubmitTransactionRequest))]
[JsonSerializable(typeof(AbortRequest))]
[JsonSerializable(typeof(TransactionView))]
[JsonSerializable(typeof(TransactionListView))]
[JsonSerializable(typeof(EventListView))]
[JsonSerializable(typeof(TransactionCountsView))]
[JsonSerializable(typeof(InstanceListView))]
[JsonSerializable(typeof(ProblemView))]
[JsonSerializable(typeof(ChoreographyReportView))]
[JsonSerializable(typeof(ReportChoreographyEventsRequest))]
[JsonSerializable(typeof(Dictionary<string, string>))]
public sealed partial class TreatyJsonContext : JsonSerializerContext;
